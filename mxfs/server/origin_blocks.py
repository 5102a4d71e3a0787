"""Blocks of lazily served remote files: read from the origin on demand, hashed, kept.

A remote snapshot's manifest is built from the origin's listing (see
``mxfs.server.model_cache``): large files are *lazy*, their block hashes unknown until
someone needs them. This module is where those blocks come from on the server:

* a block that is needed (``GetBlockHashes``, a range read, a stream, a hydration) is
  read from the origin once, straight into a reused buffer (:mod:`mxfs.server.block_memory`),
  hashed there, its hash kept in a small sqlite table, the bytes written from the buffer
  (``O_DIRECT``) to a content-addressed, bounded :class:`~mxfs.cache.blocks.BlockCache`
  and sent to nodes from the buffer while it holds them;
* concurrent needs of one block share one origin read (single flight); missing blocks are
  read in parallel on the origin pool, consecutive ones by one ranged read; a hydration
  walking a file by windows of hashes has the next window read ahead;
* a block read back from the store is checked against its stored hash (the store may be
  shared on disk with another replica, or damaged); a block re-read from the origin must
  match the hash recorded before (the origin object is pinned; a change is an error);
* once every block of a file whose origin publishes a real sha256 (HF LFS) is present,
  ``verify_file`` checks the whole-file digest.

Hashes outlive evicted bytes and restarts, so a node asking again moves nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from mxfs.cache.blocks import BlockCache
from mxfs.cache.punch import punch_file, punch_hole
from mxfs.errors import IntegrityError
from mxfs.manifest import hashing
from mxfs.manifest.model import BlockKey, FileEntry
from mxfs.origins.remote import BytesBody, OriginUnavailable, RangeBody
from mxfs.server.block_memory import BlockMemory

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_RETRIES = 3

#: bytes in reused buffers for blocks just read from origins (received, hashed, stored and sent from there)
HOT_BYTES = 128 * 1024 * 1024
#: offsets and lengths of ``O_DIRECT`` writes are multiples of this (covers 512 and 4096 byte sectors)
DIRECT_ALIGN = 4096

#: one origin read takes consecutive missing blocks up to this many bytes (s3rver measured ~1.5 ms
#: of CPU per request besides the bytes; S3 itself suggests 8-16 MiB ranged GETs) ...
READ_BYTES = 8 * 1024 * 1024
#: ... but a window of blocks is cut into at least this many reads, so it still moves in parallel
READ_PARALLEL = 4

#: a hash ask of at least this many blocks that follows the previous one of its file reads the next
#: window ahead (hydrations ask 8 at a time; one tensor's read asks fewer and never reads ahead) ...
READ_AHEAD_MIN_BLOCKS = 4
#: ... while blocks in flight stay within this share of ``hot``
READ_AHEAD_SHARE = 0.5

#: ``read(offset, length) -> bytes`` of one pinned origin file; it may also have
#: ``open(offset, length) -> RangeBody``, whose bytes go straight into the caller's buffers
OriginRead = Callable[[int, int], bytes]


def open_body(read: OriginRead, offset: int, length: int) -> RangeBody:
    """The origin bytes ``[offset, offset+length)`` as a body to ``fill`` buffers from."""
    opener = getattr(read, "open", None)
    if opener is not None:
        return opener(offset, length)
    return BytesBody(read(offset, length), length, f"origin range {offset}+{length}")


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

    Every method takes the block hash ``algorithm`` of the manifest it serves. A block read
    from the origin is received into a reused buffer of ``hot`` (:class:`BlockMemory`),
    hashed there once, then written from it to the store (``O_DIRECT`` where the
    filesystem allows: no page cache is filled with bytes that are about to be sent from
    memory anyway) and sent to nodes from it (``pinned_block``). A block only in the store
    is hashed once more when this process first reads it back (the store may be shared or
    damaged); after that it is sent with ``sendfile`` as stored: nodes verify every block
    they receive, so the server does not hash a block again on every serve.
    """

    def __init__(self, root: Path, pool: ThreadPoolExecutor, limit_bytes: int,
                 on_origin_bytes: Callable[[int], None] | None = None, memory_bytes: int = HOT_BYTES,
                 direct_io: bool = True, read_bytes: int = READ_BYTES) -> None:
        self.root = Path(root)
        self.store = BlockCache(self.root / "blocks", limit_bytes)
        self.hashes = BlockHashStore(self.root / "block-hashes.sqlite3")
        self.hot = BlockMemory(memory_bytes)
        self.hashed = 0  # blocks hashed by this process (origin reads + store checks), for tests
        self.direct_io = direct_io  # turned off for good where the filesystem refuses O_DIRECT
        self.read_bytes = read_bytes
        self._pool = pool
        self._on_origin_bytes = on_origin_bytes or (lambda _n: None)
        self._lock = threading.Lock()
        self._flights: dict[BlockKey, Future[None]] = {}
        self._checked: set[tuple[BlockKey, str]] = set()  # stored bytes known to match their digest
        #: per file being walked by window-sized asks: (end of the furthest ask, end of what was read ahead)
        self._streams: dict[tuple[str, int, str], tuple[int, int]] = {}
        self.store.listeners.append(self._on_store_change)

    def _on_store_change(self, added: list[BlockKey], removed: list[BlockKey]) -> None:
        if removed:
            with self._lock:
                for key in removed:
                    for algorithm in hashing.ALGORITHMS:
                        self._checked.discard((key, algorithm))

    def _digest(self, algorithm: str, data: hashing.Buffer) -> bytes:
        self.hashed += 1
        return hashing.block_digest(algorithm, data)

    # -- one block ------------------------------------------------------------------------

    def block(self, entry: FileEntry, block_size: int, index: int, read: OriginRead,
              algorithm: str = hashing.LEGACY) -> bytes:
        """Verified bytes of block ``index`` (from memory, the store, or the origin)."""
        with self._view(entry, block_size, index, read, algorithm) as view:
            return bytes(view)

    @contextmanager
    def _view(self, entry: FileEntry, block_size: int, index: int, read: OriginRead,
              algorithm: str) -> Iterator[memoryview]:
        """The verified bytes of a block, valid while the context is open."""
        def stored(key: BlockKey, length: int, known: bytes) -> memoryview | None:
            data = self._stored(key, length, known, algorithm)
            return None if data is None else memoryview(data)

        with self._held(entry, block_size, index, read, algorithm, stored, sending=False) as view:
            yield view

    @contextmanager
    def pinned_block(self, entry: FileEntry, block_size: int, index: int, read: OriginRead,
                     algorithm: str = hashing.LEGACY) -> Iterator[tuple[Path, int, int] | memoryview]:
        """A verified block to send, not evicted or reused while the context is open: a view
        of it in memory, or (blob path, offset, length) of its checked copy in the store."""
        offset = entry.block_span(index, block_size)[0]

        def stored(key: BlockKey, length: int, known: bytes) -> tuple[Path, int, int] | None:
            if self.store.contains(key) and (
                    self._is_checked(key, algorithm) or self._stored(key, length, known, algorithm) is not None):
                return self.store.blob_path(key.sha256), offset, length
            return None

        key = entry.key(index, block_size)
        self.store.pin(key)
        try:
            with self._held(entry, block_size, index, read, algorithm, stored, sending=True) as got:
                yield got
        finally:
            self.store.unpin(key)

    @contextmanager
    def _held(self, entry: FileEntry, block_size: int, index: int, read: OriginRead, algorithm: str,
              stored: Callable[[BlockKey, int, bytes], T | None], sending: bool) -> Iterator[memoryview | T]:
        """A block from ``hot`` (held there while the context is open), else what ``stored``
        makes of its checked copy in the store, else read from the origin and looked up again
        (a few times: a block can leave memory before it is taken)."""
        key = entry.key(index, block_size)
        length = entry.block_span(index, block_size)[1]
        for _ in range(READ_RETRIES):
            slot = self.hot.take(key)
            if slot is not None:
                view = slot.view()
                try:
                    yield view
                    if sending:
                        self.hot.mark_sent(key)
                finally:
                    view.release()
                    self.hot.release(slot)
                return
            known = self.hashes.get(key, algorithm)  # None: never hashed under this algorithm
            got = stored(key, length, known) if known is not None else None
            if got is not None:
                yield got
                return
            self._start(entry, block_size, [index], read, algorithm)[0].result()
        raise OriginUnavailable(f"block {key} of {entry.path} could be neither kept nor stored; try again")

    def _is_checked(self, key: BlockKey, algorithm: str) -> bool:
        with self._lock:
            return (key, algorithm) in self._checked

    def _stored(self, key: BlockKey, length: int, known: bytes, algorithm: str) -> bytes | None:
        """The store's bytes of ``key`` when they match ``known`` (checked once per process)."""
        data = self.store.read(key, length)
        if data is None:
            return None
        if self._is_checked(key, algorithm) or self._digest(algorithm, data) == known:
            with self._lock:
                self._checked.add((key, algorithm))
            return data
        log.warning("stored origin block %s is corrupt; reading it from the origin again", key)
        self.store.discard(key)
        return None

    def _start(self, entry: FileEntry, block_size: int, indices: list[int], read: OriginRead,
               algorithm: str) -> list[Future[None]]:
        """The single flights of blocks ``indices``; the blocks without one are read from the
        origin on the pool, consecutive ones by one ranged read of up to ``read_bytes``. A
        flight resolves once its verified block is in ``hot`` and the store."""
        flights: list[Future[None]] = []
        mine: list[int] = []
        with self._lock:
            for i in indices:
                key = entry.key(i, block_size)
                flight = self._flights.get(key)
                if flight is None:
                    flight = Future()
                    if self._present(key, algorithm):  # a flight that just ended brought it
                        flight.set_result(None)
                    else:
                        self._flights[key] = flight
                        mine.append(i)
                flights.append(flight)
        for run in self._runs(mine, block_size):
            try:
                job = self._pool.submit(self._fetch_run, entry, block_size, run, read, algorithm)
            except BaseException as exc:  # the pool is shut down
                self._fail(entry, block_size, run, exc)
            else:  # a job cancelled by the pool's shutdown never runs: its waiters must not wait forever
                job.add_done_callback(lambda job, run=run: job.cancelled() and self._fail(
                    entry, block_size, run, OriginUnavailable("the server is stopping")))
        return flights

    def _present(self, key: BlockKey, algorithm: str) -> bool:
        """Whether ``key``'s bytes and its digest under ``algorithm`` are here (memory or store)."""
        return (key in self.hot or self.store.contains(key)) and self.hashes.get(key, algorithm) is not None

    def _runs(self, indices: list[int], block_size: int) -> list[list[int]]:
        """``indices`` cut into runs of consecutive blocks, each at most ``read_bytes`` long,
        and into at least ``min(len, READ_PARALLEL)`` runs so a window is still read in parallel."""
        if not indices:
            return []
        longest = max(1, min(self.read_bytes // block_size, -(-len(indices) // READ_PARALLEL)))
        runs: list[list[int]] = [[indices[0]]]
        for i in indices[1:]:
            if i == runs[-1][-1] + 1 and len(runs[-1]) < longest:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def _settle(self, key: BlockKey, exc: BaseException | None) -> None:
        with self._lock:
            flight = self._flights.pop(key, None)
        if flight is None:
            return
        if exc is None:
            flight.set_result(None)
        else:
            flight.set_exception(exc)

    def _fail(self, entry: FileEntry, block_size: int, indices: list[int], exc: BaseException) -> None:
        for i in indices:
            self._settle(entry.key(i, block_size), exc)

    def _fetch_run(self, entry: FileEntry, block_size: int, run: list[int], read: OriginRead,
                   algorithm: str) -> None:
        """On the pool: one ranged origin read of consecutive blocks, block by block into
        ``hot``'s buffers (received, hashed, published, stored), retried where it broke off."""
        pending = list(run)
        try:
            known = self.hashes.get_range(entry.sha256, block_size, run[0], run[-1] + 1, algorithm)
            for attempt in range(READ_RETRIES):
                try:
                    self._read_run(entry, block_size, pending, read, algorithm, known)
                    return
                except OriginUnavailable as exc:
                    if attempt == READ_RETRIES - 1:
                        raise
                    log.warning("retrying origin blocks %d..%d of %s: %s", pending[0], pending[-1], entry.path, exc)
                    time.sleep(0.5 * (attempt + 1))
        except BaseException as exc:
            self._fail(entry, block_size, pending, exc)

    def _read_run(self, entry: FileEntry, block_size: int, pending: list[int], read: OriginRead, algorithm: str,
                  known: dict[int, bytes]) -> None:
        """Blocks ``pending`` (consecutive) from one origin read; each is taken off ``pending``
        and its flight resolved as soon as it is verified and stored."""
        offset = pending[0] * block_size
        total = sum(entry.block_span(i, block_size)[1] for i in pending)
        with open_body(read, offset, total) as body:
            while pending:
                index = pending[0]
                key = entry.key(index, block_size)
                length = entry.block_span(index, block_size)[1]
                slot = self.hot.lend(block_size)
                try:
                    view = slot.view(length)
                    try:
                        body.fill(view)
                        self._on_origin_bytes(length)
                        digest = self._digest(algorithm, view)
                        expected = known.get(index)
                        if expected is not None and digest != expected:
                            raise IntegrityError(f"origin block {key} of {entry.path} changed: its bytes no longer "
                                                 "match the hash recorded when it was first read")
                        if expected is None:
                            self.hashes.put(key, digest, algorithm)
                        self.hot.publish(key, slot, length)  # readers may send it while it is written
                        # not marked checked: the first read back from the store verifies what landed on disk
                        self._keep(key, view)
                    finally:
                        view.release()
                finally:
                    self.hot.release(slot)
                pending.pop(0)
                self._settle(key, None)

    def _keep(self, key: BlockKey, data: memoryview) -> None:
        """Write a verified block into the store and index it; on any failure nothing is
        indexed and the bytes it may have written are punched out (the block stays in memory)."""
        length, offset = len(data), key.index * key.block_size
        if self.store.contains(key):
            return
        if not self.store.reserve(length):
            log.warning("origin block store full (all pinned): not keeping %s", key)
            return
        try:
            self._write(self.store.blob_path(key.sha256), offset, data)
        except OSError as exc:
            self.store.faults.report("write", exc, key)
            self.store.release(length)
            return
        if not self.store.commit(key, length):
            self._punch(key, length)

    def _write(self, path: Path, offset: int, data: memoryview) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        direct = self.direct_io and offset % DIRECT_ALIGN == 0 and len(data) % DIRECT_ALIGN == 0
        fd = self._open_blob(path, direct)
        try:
            try:
                written = os.pwrite(fd, data, offset)
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL:
                    raise
                log.info("origin block store: O_DIRECT writes refused here (%s); writing through the page cache",
                         exc)
                self.direct_io = False
                os.close(fd)
                fd = self._open_blob(path, False)
                written = os.pwrite(fd, data, offset)
            if written != len(data):
                with contextlib.suppress(OSError):
                    punch_hole(fd, offset, len(data))
                raise OSError(errno.ENOSPC, f"short write to the block store ({written} of {len(data)} bytes)")
        finally:
            os.close(fd)

    def _open_blob(self, path: Path, direct: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        if direct:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                log.info("origin block store: O_DIRECT not supported here; writing through the page cache")
                self.direct_io = False
        return os.open(path, flags, 0o644)

    def _punch(self, key: BlockKey, length: int) -> None:
        punch_file(self.store.blob_path(key.sha256), key.index * key.block_size, length, key)

    # -- many blocks ----------------------------------------------------------------------

    def blocks(self, entry: FileEntry, block_size: int, indices: Iterable[int], read: OriginRead,
               keep: bool = True, algorithm: str = hashing.LEGACY) -> dict[int, bytes]:
        """Verified bytes of several blocks, the missing ones read from the origin in parallel.

        ``keep=False`` returns nothing (the blocks are only made present, and their hashes known).
        """
        todo = sorted(set(indices))
        self._wait(self._start(entry, block_size, todo, read, algorithm))
        return {i: self.block(entry, block_size, i, read, algorithm) for i in todo} if keep else {}

    @staticmethod
    def _wait(flights: list[Future[None]]) -> None:
        """Wait for every flight; raise the first failure."""
        done, _ = wait(flights, return_when=FIRST_EXCEPTION)
        for fut in done:
            fut.result()
        wait(flights)
        for fut in flights:
            fut.result()

    def _read_ahead(self, entry: FileEntry, block_size: int, first: int, end: int, read: OriginRead,
                    algorithm: str) -> None:
        """After a window-sized ask of hashes near the previous one of the same file (a
        hydration walking it) has been answered: start reading the window past the furthest
        ask from the origin, so the origin is not idle until the next ask comes. Not waited
        for; only while blocks in flight stay within ``READ_AHEAD_SHARE`` of ``hot``, so blocks
        read but not yet sent are not pushed out. A file read elsewhere costs one window."""
        count = end - first
        if count < READ_AHEAD_MIN_BLOCKS:
            return
        stream = (entry.sha256, block_size, algorithm)
        with self._lock:
            asked, ahead = self._streams.pop(stream, (0, 0))
            near = asked > 0 and asked - 2 * count <= first <= asked + count
            asked = max(asked, end) if near else end
            start = max(asked, ahead) if near else asked
            stop = min(entry.block_count(block_size), asked + count)
            room = (len(self._flights) + stop - start) * block_size <= self.hot.limit * READ_AHEAD_SHARE
            go = near and start < stop and room
            self._streams[stream] = (asked, stop if go else ahead if near else 0)
            while len(self._streams) > 1024:
                self._streams.pop(next(iter(self._streams)))
        if go:
            self._start(entry, block_size, list(range(start, stop)), read, algorithm)

    def read_range(self, entry: FileEntry, block_size: int, offset: int, length: int, read: OriginRead,
                   algorithm: str = hashing.LEGACY) -> bytes:
        """Bytes ``[offset, offset+length)`` of a lazy file, block by block."""
        indices = entry.blocks_for(offset, length, block_size)
        if len(indices) > 1:
            self.blocks(entry, block_size, indices, read, keep=False, algorithm=algorithm)
        out = bytearray()
        end = offset + length
        for i in indices:
            start = i * block_size
            with self._view(entry, block_size, i, read, algorithm) as data:
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
            self._wait(self._start(entry, block_size, missing, read, algorithm))
            known.update(self.hashes.get_range(entry.sha256, block_size, first, end, algorithm))
        self._read_ahead(entry, block_size, first, end, read, algorithm)
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
            with self._view(entry, block_size, i, read, algorithm) as data:
                h.update(data)
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
        log.info("origin block buffers: %d MiB pooled (bound %d MiB), %d lent outside the bound",
                 self.hot.pooled_bytes >> 20, self.hot.limit >> 20, self.hot.overflow)
        self.store.close()
        self.hashes.close()
