"""Blocks of lazily served remote files: read from the origin on demand, hashed, kept.

A remote snapshot's manifest is built from the origin's listing (see
``mxfs.server.model_cache``): large files are *lazy*, their block hashes unknown until
someone needs them. This module is where those blocks come from on the server:

* a block that is needed (``GetBlockHashes``, a range read, a stream, a hydration) is
  read from the origin once, hashed, stored in a content-addressed, bounded
  :class:`~mxfs.cache.blocks.BlockCache` and its hash in a small sqlite table;
* concurrent needs of one block share one origin read (single flight), several missing
  blocks are read in parallel on the origin pool;
* a block read back from the store is checked against its stored hash (the store may be
  shared on disk with another replica, or damaged); a block re-read from the origin must
  match the hash recorded before (the origin object is pinned; a change is an error);
* once every block of a file whose origin publishes a real sha256 (HF LFS) is present,
  ``verify_file`` checks the whole-file digest.

Hashes outlive evicted bytes and restarts, so a node asking again moves nothing.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks
from mxfs.errors import IntegrityError
from mxfs.manifest import hashing
from mxfs.manifest.model import BlockKey, FileEntry
from mxfs.origins.remote import OriginUnavailable

log = logging.getLogger(__name__)

HOT_BYTES = 64 * 1024 * 1024
READ_RETRIES = 3

#: ``read(offset, length) -> bytes`` of one pinned origin file
OriginRead = Callable[[int, int], bytes]


class BlockHashStore:
    """Persistent map (BlockKey, algorithm) -> block digest (sqlite, WAL), with an in-memory front.

    Digests are stored under the file id for sha256 (as before the algorithm was recorded)
    and under ``<file id>:<algorithm>`` for any other algorithm.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS hashes (file TEXT, block_size INTEGER, idx INTEGER, "
                         "digest BLOB, PRIMARY KEY (file, block_size, idx)) WITHOUT ROWID")
        self._db.execute("CREATE TABLE IF NOT EXISTS verified (file TEXT, block_size INTEGER, "
                         "PRIMARY KEY (file, block_size)) WITHOUT ROWID")
        self._lock = threading.Lock()
        self._mem: dict[tuple[str, int, int], bytes] = {}

    @staticmethod
    def _file(sha256: str, algorithm: str) -> str:
        return sha256 if algorithm == hashing.SHA256 else f"{sha256}:{algorithm}"

    def get(self, key: BlockKey, algorithm: str = hashing.LEGACY) -> bytes | None:
        return self.get_range(key.sha256, key.block_size, key.index, key.index + 1, algorithm).get(key.index)

    def get_range(self, sha256: str, block_size: int, start: int, end: int,
                  algorithm: str = hashing.LEGACY) -> dict[int, bytes]:
        """Known digests of blocks ``[start, end)`` by index."""
        file = self._file(sha256, algorithm)
        out: dict[int, bytes] = {}
        with self._lock:
            for i in range(start, end):
                d = self._mem.get((file, block_size, i))
                if d is not None:
                    out[i] = d
            if len(out) == end - start:
                return out
            rows = self._db.execute(
                "SELECT idx, digest FROM hashes WHERE file=? AND block_size=? AND idx>=? AND idx<?",
                (file, block_size, start, end)).fetchall()
            for i, d in rows:
                out[i] = bytes(d)
                self._mem[(file, block_size, i)] = bytes(d)
        return out

    def put(self, key: BlockKey, digest: bytes, algorithm: str = hashing.LEGACY) -> None:
        file = self._file(key.sha256, algorithm)
        with self._lock:
            self._mem[(file, key.block_size, key.index)] = digest
            self._db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)",
                             (file, key.block_size, key.index, digest))

    def forget_file(self, sha256: str, block_size: int) -> None:
        """Forget every digest of a file, under every algorithm."""
        files = [self._file(sha256, a) for a in hashing.ALGORITHMS]
        with self._lock:
            for k in [k for k in self._mem if k[0] in files and k[1] == block_size]:
                del self._mem[k]
            for file in files:
                self._db.execute("DELETE FROM hashes WHERE file=? AND block_size=?", (file, block_size))
            self._db.execute("DELETE FROM verified WHERE file=? AND block_size=?", (sha256, block_size))

    def is_verified(self, sha256: str, block_size: int) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM verified WHERE file=? AND block_size=?",
                                    (sha256, block_size)).fetchone() is not None

    def set_verified(self, sha256: str, block_size: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO verified VALUES (?, ?)", (sha256, block_size))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OriginBlocks:
    """The server's store of lazily fetched origin blocks (thread-safe, blocking calls).

    Every method takes the block hash ``algorithm`` of the manifest it serves. A block is
    hashed when it arrives from the origin and once more when this process first reads it
    back from the store (the store may be shared or damaged); after that it is served as
    stored, with ``sendfile`` where the caller can (``pinned_block``): nodes verify every
    block they receive, so the server does not hash a block again on every serve.
    """

    def __init__(self, root: Path, pool: ThreadPoolExecutor, limit_bytes: int,
                 on_origin_bytes: Callable[[int], None] | None = None) -> None:
        self.root = Path(root)
        self.store = BlockCache(self.root / "blocks", limit_bytes)
        self.hashes = BlockHashStore(self.root / "block-hashes.sqlite3")
        self.hot = HotBlocks(HOT_BYTES)
        self.hashed = 0  # blocks hashed by this process (origin reads + store checks), for tests
        self._pool = pool
        self._on_origin_bytes = on_origin_bytes or (lambda _n: None)
        self._lock = threading.Lock()
        self._flights: dict[BlockKey, Future[bytes]] = {}
        self._checked: set[tuple[BlockKey, str]] = set()  # stored bytes known to match their digest
        self.store.listeners.append(self._on_store_change)

    def _on_store_change(self, added: list[BlockKey], removed: list[BlockKey]) -> None:
        if removed:
            with self._lock:
                for key in removed:
                    for algorithm in hashing.ALGORITHMS:
                        self._checked.discard((key, algorithm))

    def _digest(self, algorithm: str, data: bytes) -> bytes:
        self.hashed += 1
        return hashing.block_digest(algorithm, data)

    # -- one block ------------------------------------------------------------------------

    def block(self, entry: FileEntry, block_size: int, index: int, read: OriginRead,
              algorithm: str = hashing.LEGACY) -> bytes:
        """Verified bytes of block ``index`` (from memory, the store, or the origin)."""
        key = entry.key(index, block_size)
        offset, length = entry.block_span(index, block_size)
        known = self.hashes.get(key, algorithm)  # None: never hashed under this algorithm, read the origin
        if known is not None:
            data = self.hot.get(key)
            if data is not None:
                return bytes(data)
            data = self.store.read(key, length)
            if data is not None:
                with self._lock:
                    checked = (key, algorithm) in self._checked
                if checked or self._digest(algorithm, data) == known:
                    with self._lock:
                        self._checked.add((key, algorithm))
                    self.hot.put(key, data)
                    return data
                log.warning("stored origin block %s is corrupt; reading it from the origin again", key)
                self.store.discard(key)
        with self._lock:
            flight = self._flights.get(key)
            owner = flight is None
            if owner:
                flight = self._flights[key] = Future()
        assert flight is not None
        if not owner:
            return flight.result()
        try:
            data = self._from_origin(read, offset, length, key)
            digest = self._digest(algorithm, data)
            if known is not None and digest != known:
                raise IntegrityError(f"origin block {key} of {entry.path} changed: its bytes no longer match "
                                     "the hash recorded when it was first read")
            try:  # not marked checked: the first read back from the store verifies what landed on disk
                self.store.put(key, data)
            except OSError as exc:  # e.g. ENOSPC: the bytes are still served
                log.warning("cannot store origin block %s: %s", key, exc)
            if known is None:
                self.hashes.put(key, digest, algorithm)
            self.hot.put(key, data)
            flight.set_result(data)
            return data
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)

    @contextmanager
    def pinned_block(self, entry: FileEntry, block_size: int, index: int, read: OriginRead,
                     algorithm: str = hashing.LEGACY) -> Iterator[tuple[Path, int, int] | bytes]:
        """(blob path, offset, length) of a verified stored block, pinned (not evicted) while
        the caller sends it; or the verified bytes when the store could not keep them."""
        key = entry.key(index, block_size)
        self.store.pin(key)
        try:
            with self._lock:
                checked = (key, algorithm) in self._checked
            data = None
            if not (checked and self.store.contains(key)):
                data = self.block(entry, block_size, index, read, algorithm)
                with self._lock:
                    checked = (key, algorithm) in self._checked
            if checked and self.store.contains(key):
                offset, length = entry.block_span(index, block_size)
                yield self.store.blob_path(key.sha256), offset, length
            else:
                yield data if data is not None else self.block(entry, block_size, index, read, algorithm)
        finally:
            self.store.unpin(key)

    def _from_origin(self, read: OriginRead, offset: int, length: int, key: BlockKey) -> bytes:
        for attempt in range(READ_RETRIES):
            try:
                data = read(offset, length)
                break
            except OriginUnavailable as exc:
                if attempt == READ_RETRIES - 1:
                    raise
                log.warning("retrying origin block %s: %s", key, exc)
                time.sleep(0.5 * (attempt + 1))
        self._on_origin_bytes(len(data))
        if len(data) != length:
            raise OriginUnavailable(f"origin sent {len(data)} of {length} bytes of block {key}")
        return data

    # -- many blocks ----------------------------------------------------------------------

    def blocks(self, entry: FileEntry, block_size: int, indices: Iterable[int], read: OriginRead,
               keep: bool = True, algorithm: str = hashing.LEGACY) -> dict[int, bytes]:
        """Verified bytes of several blocks, the missing ones read from the origin in parallel.

        ``keep=False`` returns nothing (the blocks are only made present).
        """
        todo = list(indices)
        if len(todo) <= 1:
            return {i: self.block(entry, block_size, i, read, algorithm) for i in todo}
        futures = {i: self._pool.submit(self.block, entry, block_size, i, read, algorithm) for i in todo}
        done, pending = wait(futures.values(), return_when=FIRST_EXCEPTION)
        for fut in pending:
            fut.cancel()
        wait(pending)
        for fut in done:
            fut.result()  # raise the first failure
        return {i: fut.result() for i, fut in futures.items()} if keep else {}

    def read_range(self, entry: FileEntry, block_size: int, offset: int, length: int, read: OriginRead,
                   algorithm: str = hashing.LEGACY) -> bytes:
        """Bytes ``[offset, offset+length)`` of a lazy file, block by block."""
        indices = entry.blocks_for(offset, length, block_size)
        if len(indices) == 1 and offset == indices[0] * block_size:
            data = self.block(entry, block_size, indices[0], read, algorithm)  # a whole-block read: no copy
            if len(data) == length:
                return data
        got = self.blocks(entry, block_size, indices, read, algorithm=algorithm)
        out = bytearray()
        end = offset + length
        for i in indices:
            start = i * block_size
            data = got[i]
            out += data[max(offset, start) - start: min(end, start + len(data)) - start]
        return bytes(out)

    def block_hashes(self, entry: FileEntry, block_size: int, first: int, count: int, lookahead: int,
                     read: OriginRead, algorithm: str = hashing.LEGACY) -> list[bytes]:
        """Hashes of ``[first, first+count)`` (reading unknown blocks from the origin), then up
        to ``lookahead`` more that are already known (``b""`` for unknown ones)."""
        n = entry.block_count(block_size)
        if not 0 <= first < n or count < 1:
            raise ValueError(f"blocks {first}+{count} outside {entry.path} ({n} blocks)")
        end = min(n, first + count)
        stop = min(n, end + max(0, lookahead))
        known = self.hashes.get_range(entry.sha256, block_size, first, stop, algorithm)
        missing = [i for i in range(first, end) if i not in known]
        if missing:
            self.blocks(entry, block_size, missing, read, keep=False, algorithm=algorithm)
            known.update(self.hashes.get_range(entry.sha256, block_size, first, end, algorithm))
        out = [known.get(i, b"") for i in range(first, stop)]
        if not all(out[: end - first]):
            raise IntegrityError(f"hashes of {entry.path} blocks {first}..{end - 1} were not recorded")
        return out

    # -- whole files ----------------------------------------------------------------------

    def fill(self, entry: FileEntry, block_size: int, read: OriginRead, window: int,
             advance: Callable[[int], None], lost: Callable[[], bool] = lambda: False,
             algorithm: str = hashing.LEGACY) -> None:
        """Make every block of ``entry`` present (``window`` blocks in flight), then verify it."""
        n = entry.block_count(block_size)
        for start in range(0, n, window):
            if lost():
                raise IntegrityError(f"gave up filling {entry.path}: the download lease was lost")
            idx = range(start, min(n, start + window))
            present = [i for i in idx if self.store.contains(entry.key(i, block_size))
                       and self.hashes.get(entry.key(i, block_size), algorithm) is not None]
            self.blocks(entry, block_size, [i for i in idx if i not in present], read, keep=False,
                        algorithm=algorithm)
            advance(sum(entry.block_span(i, block_size)[1] for i in idx))
        self.verify_file(entry, block_size, read, algorithm)

    def verify_file(self, entry: FileEntry, block_size: int, read: OriginRead,
                    algorithm: str = hashing.LEGACY) -> None:
        """Check a fully present file against its published digest; on mismatch forget it."""
        if not entry.digest_verified or self.hashes.is_verified(entry.sha256, block_size):
            return
        h = hashlib.sha256()
        for i in range(entry.block_count(block_size)):
            h.update(self.block(entry, block_size, i, read, algorithm))
        if h.hexdigest() != entry.sha256:
            self.discard_file(entry, block_size, forget_hashes=True)
            raise IntegrityError(f"{entry.path}: the origin's bytes hash to {h.hexdigest()}, "
                                 f"not the published sha256 {entry.sha256}")
        self.hashes.set_verified(entry.sha256, block_size)

    def present_bytes(self, entry: FileEntry, block_size: int) -> int:
        return self.store.cached_bytes(entry, block_size)

    def discard_file(self, entry: FileEntry, block_size: int, forget_hashes: bool = False) -> None:
        """Free a file's stored blocks (eviction); hashes stay unless they proved wrong."""
        for i in range(entry.block_count(block_size)):
            key = entry.key(i, block_size)
            self.hot.discard(key)
            if self.store.contains(key):
                self.store.discard(key)
        if forget_hashes:
            self.hashes.forget_file(entry.sha256, block_size)

    def close(self) -> None:
        self.store.close()
        self.hashes.close()
