"""Block hashes of lazily served files, asked from the server and remembered on disk.

A remote file the server serves lazily has no block hashes in its manifest (see
``mxfs.server.model_cache``). Before the fetch chain can verify such a block it asks the
server ``GetBlockHashes`` for it (the server reads that block from the origin if nobody
has yet) plus a lookahead window of hashes the server already knows. Answers are kept in
memory and appended to ``<state>/manifests/.block-hashes/<content id>-<block size>``, so
a restarted daemon verifies the blocks it has cached even while the server is away.

Each (file, block) is asked once at a time: the chain already shares one load per block,
and a second asker of a block that is in flight waits for that answer.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import overload

import trio

from mxfs.errors import BlockUnavailable
from mxfs.fetch.threads import in_thread
from mxfs.fileio import path_under
from mxfs.manifest import hashing
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.rpc.client import MxfsClient

log = logging.getLogger(__name__)

WINDOW = 16
_RECORD = struct.Struct("<I32s")  # block index, 32-byte block digest

FileId = tuple[str, int, str]  # (content id, block size, block hash algorithm)


class KnownHashes(Sequence[bytes]):
    """The ``block_hashes`` of a lazy entry as far as they are known (unknown ones raise)."""

    def __init__(self, count: int, known: dict[int, bytes]) -> None:
        self._count = count
        self._known = known

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        digest = self._known.get(index)
        if digest is None:
            raise BlockUnavailable(f"hash of block {index} is not known yet")
        return digest


class BlockHashes:
    """Expected digests of blocks of lazy entries: memory, then local disk, then the server."""

    def __init__(self, client: MxfsClient, state_dir: Path, limiter: trio.CapacityLimiter,
                 window: int = WINDOW) -> None:
        self.client = client
        self.dir = Path(state_dir) / "manifests" / ".block-hashes"
        self.limiter = limiter
        self.window = max(1, window)
        self._known: dict[FileId, dict[int, bytes]] = {}
        self._flights: dict[tuple[FileId, int], trio.Event] = {}
        self._file_lock = threading.Lock()
        self.asked = 0  # GetBlockHashes calls made (for tests and status)

    def _path(self, fid: FileId) -> Path:
        name = f"{fid[0]}-{fid[1]}"  # sha256 digests: the name used before the algorithm was recorded
        return path_under(self.dir, name if fid[2] == hashing.SHA256 else f"{name}-{fid[2]}")

    def _load(self, fid: FileId) -> dict[int, bytes]:
        try:
            raw = self._path(fid).read_bytes()
        except OSError:
            return {}
        whole = len(raw) - len(raw) % _RECORD.size  # a torn last record is ignored
        return dict(_RECORD.iter_unpack(raw[:whole]))

    def _append(self, fid: FileId, found: dict[int, bytes]) -> None:
        data = b"".join(_RECORD.pack(i, d) for i, d in sorted(found.items()))
        try:
            with self._file_lock:
                self.dir.mkdir(parents=True, exist_ok=True)
                with open(self._path(fid), "ab") as fh:
                    fh.write(data)
        except OSError as exc:  # memory still has them; only a restart would ask again
            log.warning("cannot persist block hashes of %s: %s", fid[0][:12], exc)

    async def _memo(self, fid: FileId) -> dict[int, bytes]:
        known = self._known.get(fid)
        if known is None:
            loaded = await in_thread(self._load, fid)
            known = self._known.setdefault(fid, loaded)
        return known

    def _ask(self, manifest: Manifest, entry: FileEntry, index: int, count: int = 1) -> dict[int, bytes]:
        """One GetBlockHashes call: blocks ``[index, index+count)`` (the server reads those it
        does not know from the origin, in parallel) plus the known rest of the window (blocking)."""
        n = entry.block_count(manifest.block_size)
        count = max(1, min(count, n - index))
        lookahead = max(0, min(self.window - count, n - index - count))
        hashes = self.client.block_hashes(manifest.name, manifest.revision, entry.path, index, count, lookahead)
        # only what was asked for: a server cannot make us remember hashes past the window or the file
        found = {index + i: h for i, h in enumerate(hashes[: count + lookahead]) if len(h) == 32}
        if any(index + i not in found for i in range(count)):
            raise BlockUnavailable(f"server sent no hash for blocks {index}+{count} of {manifest.name}/{entry.path}")
        return found

    async def get(self, manifest: Manifest, entry: FileEntry, index: int) -> bytes:
        """The expected digest of block ``index`` of ``entry`` (``manifest.block_hash``)."""
        fid = (entry.sha256, manifest.block_size, manifest.block_hash)
        known = await self._memo(fid)
        while (digest := known.get(index)) is None:
            flight = self._flights.get((fid, index))
            if flight is not None:
                await flight.wait()
                continue
            await self._fetch(fid, known, manifest, entry, index, 1)
        return digest

    async def prefetch(self, manifest: Manifest, entry: FileEntry, index: int, count: int) -> None:
        """Ask for the unknown hashes of ``[index, index+count)`` in one call (a hydration
        about to need them: the server reads those blocks from the origin side by side);
        concurrent ``get``s of them wait for it. Failures are left to those ``get``s."""
        fid = (entry.sha256, manifest.block_size, manifest.block_hash)
        known = await self._memo(fid)
        end = min(entry.block_count(manifest.block_size), index + count)
        while index < end and (index in known or (fid, index) in self._flights):
            index += 1
        run = 0
        while index + run < end and index + run not in known and (fid, index + run) not in self._flights:
            run += 1
        if run:
            try:
                await self._fetch(fid, known, manifest, entry, index, run)
            except BlockUnavailable as exc:
                log.debug("hash prefetch of %s blocks %d+%d: %s", entry.path, index, run, exc)

    async def _fetch(self, fid: FileId, known: dict[int, bytes], manifest: Manifest, entry: FileEntry,
                     index: int, count: int) -> None:
        """One ``_ask`` for ``count`` blocks from ``index``, each under its own flight."""
        flight = trio.Event()
        indices = range(index, index + count)
        for i in indices:
            self._flights[(fid, i)] = flight
        try:
            self.asked += 1
            found = await in_thread(self._ask, manifest, entry, index, count, limiter=self.limiter, abandon=True)
            new = {i: h for i, h in found.items() if i not in known}
            known.update(new)
            if new:
                await in_thread(self._append, fid, new)
        finally:
            for i in indices:
                if self._flights.get((fid, i)) is flight:
                    del self._flights[(fid, i)]
            flight.set()

    def view(self, manifest: Manifest, entry: FileEntry) -> FileEntry:
        """``entry`` with the hashes known so far as its ``block_hashes`` (for tiers that verify)."""
        known = self._known.get((entry.sha256, manifest.block_size, manifest.block_hash), {})
        return replace(entry, block_hashes=KnownHashes(entry.block_count(manifest.block_size), known))  # type: ignore[arg-type]
