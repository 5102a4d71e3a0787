"""Block bytes in per-file blobs (a complete file is a plain local file), indexed in lmdb
by content address, bounded with LRU eviction that never evicts pinned blocks.

Blobs are sparse while blocks trickle in from readers; hydration preallocates a blob
(``prepare_blob``), writes verified blocks in place (``commit``) and records the file
complete (``mark_complete``) once every block is there and synced: ``complete_blob`` is
then a plain file with exactly the file's bytes (what FUSE passthrough opens). The complete
record carries a seal of the blob (inode, size, ctime): every block was verified before it was
written, and any later write to the blob (or a punched hole) moves its ctime, so ``sealed``
tells without reading a byte whether the blob is still what was verified.

Every method is blocking and thread-safe: async callers run them in worker threads.
Write order is data first, then index, so a crash (even ``kill -9``) never leaves an
index entry pointing at bytes that were not written. Readers still verify every block.
A writer reserves its block's room (evicting as needed) before it writes (``put``, or
``reserve`` then ``commit``/``release`` for in-place writes), so concurrent writers never
push ``used`` past ``limit``. Disk and index failures (ENOSPC, a full lmdb map, an
unreadable blob) never raise from ``read``/``put``/``commit``: a read becomes a miss, a
write is skipped, and ``faults`` counts and logs why.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path

import lmdb

from mxfs.cache.faults import CACHE_FAILURES, CacheFaults
from mxfs.cache.punch import punch_file, punch_hole
from mxfs.fileio import path_under
from mxfs.manifest.model import BlockKey, FileEntry

log = logging.getLogger(__name__)

_VALUE = struct.Struct("<Id")  # block length, last use (unix seconds)
DEFAULT_INDEX_BYTES = 1 << 34  # lmdb map size: address space, not disk (the file grows as used)


def _encode(key: BlockKey) -> bytes:
    return f"{key.sha256}:{key.block_size}:{key.index}".encode()


_SEAL = struct.Struct("<QQq")  # size, inode, ctime_ns of a complete blob when it was recorded


def _seal_of(st: os.stat_result) -> bytes:
    return _SEAL.pack(st.st_size, st.st_ino, st.st_ctime_ns)


def _file_key(sha256: str, block_size: int) -> bytes:
    return f"{sha256}:{block_size}".encode()


def _decode(raw: bytes) -> BlockKey:
    sha, bs, idx = raw.decode().split(":")
    return BlockKey(sha, int(bs), int(idx))


class BlockCache:
    """Content-addressed block store under ``root`` holding at most ``limit_bytes``."""

    def __init__(self, root: Path, limit_bytes: int | Callable[[int], int],
                 index_bytes: int = DEFAULT_INDEX_BYTES, faults: CacheFaults | None = None) -> None:
        """``limit_bytes`` may be a function of the bytes the cache already holds (read from
        its index at start), e.g. a share of the free disk plus those."""
        self.root = Path(root)
        self._limit_of = limit_bytes if callable(limit_bytes) else None
        self.limit = 0 if callable(limit_bytes) else limit_bytes
        self.faults = faults or CacheFaults()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        # no fsync per commit: a process crash keeps every committed entry (the OS holds the
        # pages); after a power loss every block is still verified by its hash before use
        self._env = lmdb.open(
            str(self.root / "index.lmdb"), map_size=index_bytes, max_dbs=2, subdir=True, lock=True,
            sync=False, metasync=False,
        )
        self._db = self._env.open_db(b"blocks")
        #: files whose every block was verified in place by hydration: "<sha256>:<block size>" -> size
        self._complete_db = self._env.open_db(b"complete")
        self._lock = threading.Lock()
        self._lru: OrderedDict[BlockKey, int] = OrderedDict()
        self._pins: Counter[BlockKey] = Counter()
        self._touched: dict[BlockKey, float] = {}
        self._writing: set[BlockKey] = set()
        #: blocks whose bytes in their blob this process verified (written from verified bytes,
        #: or read back and checked): a reader may hand them on from the blob unhashed
        self._verified: set[BlockKey] = set()
        self._blob_generation: Counter[str] = Counter()  # bumped when a blob file is unlinked
        self.used = 0  # bytes of cached blocks plus the room reserved by writes in progress
        self.evicted_blocks = 0
        #: ``fn(added, removed)`` after blocks enter or leave the cache (any thread, no lock held)
        self.listeners: list[Callable[[list[BlockKey], list[BlockKey]], None]] = []
        self._load_index()

    # -- start-up ------------------------------------------------------------------

    def _load_index(self) -> None:
        entries: list[tuple[float, BlockKey, int]] = []
        with self._env.begin(db=self._db) as txn:
            for raw, value in txn.cursor():
                length, last_use = _VALUE.unpack(value)
                entries.append((last_use, _decode(raw), length))
        entries.sort()
        for _, key, length in entries:
            self._lru[key] = length
            self.used += length
        if self._limit_of is not None:
            self.limit = self._limit_of(self.used)
        log.info("block cache %s: %d blocks, %d bytes (limit %d)", self.root, len(entries),
                 self.used, self.limit)

    # -- paths and fds ---------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return path_under(self.root, "blobs", sha256[:2], sha256)

    def _open(self, sha256: str, create: bool) -> int | None:
        """A new fd of the blob (per operation: no shared fd can be closed under a reader)."""
        path = self.blob_path(sha256)
        flags = os.O_RDWR | os.O_CLOEXEC
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags |= os.O_CREAT
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            return None

    # -- queries ---------------------------------------------------------------------

    def keys(self) -> list[BlockKey]:
        """A snapshot of every cached block's key."""
        with self._lock:
            return list(self._lru)

    def _notify(self, added: list[BlockKey], removed: list[BlockKey]) -> None:
        for fn in self.listeners:
            fn(added, removed)

    def contains(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._lru

    def mark_verified(self, key: BlockKey) -> None:
        """Record that ``key``'s bytes in its blob were just checked against their hash."""
        with self._lock:
            if key in self._lru:
                self._verified.add(key)

    def is_verified(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._verified

    def pin_verified(self, keys: list[BlockKey]) -> int | None:
        """Pin ``keys`` if every one is cached and verified by this process; returns the
        blob's generation (see ``open_blob``), None (nothing pinned) otherwise."""
        with self._lock:
            if not all(key in self._verified for key in keys):
                return None
            for key in keys:
                self._pins[key] += 1
                self._lru.move_to_end(key)
                self._touched[key] = time.time()
            return self._blob_generation[keys[0].sha256] if keys else 0

    def unpin_all(self, keys: list[BlockKey]) -> None:
        for key in keys:
            self.unpin(key)

    def open_blob(self, sha256: str) -> tuple[int, int] | None:
        """A read-only fd of a blob and its generation (a reader keeping the fd reopens it
        when ``pin_verified`` reports another generation: the file was unlinked meanwhile)."""
        with self._lock:
            generation = self._blob_generation[sha256]
        try:
            return os.open(self.blob_path(sha256), os.O_RDONLY | os.O_CLOEXEC), generation
        except OSError:
            return None

    def file_complete(self, entry: FileEntry, block_size: int) -> bool:
        """True when every block of ``entry`` is cached (its blob is then the whole file)."""
        with self._lock:
            return all(
                entry.key(i, block_size) in self._lru for i in range(entry.block_count(block_size))
            )

    def is_complete(self, entry: FileEntry, block_size: int) -> bool:
        """True when hydration verified every block of ``entry`` in its blob and synced it; any
        block leaving the cache (eviction, a failed check) clears it."""
        with self._env.begin(db=self._complete_db) as txn:
            return txn.get(_file_key(entry.sha256, block_size)) is not None and self.file_complete(entry, block_size)

    def sealed(self, entry: FileEntry, block_size: int) -> bool:
        """True when ``entry`` is complete and its blob is unchanged since it was recorded so
        (same inode, size and ctime): its bytes are the verified ones, without reading them.
        Records of older caches carry no seal and answer False (the caller verifies)."""
        try:
            with self._env.begin(db=self._complete_db) as txn:
                record = txn.get(_file_key(entry.sha256, block_size))
            if record is None or len(record) != _SEAL.size or not self.file_complete(entry, block_size):
                return False
            return bytes(record) == _seal_of(os.stat(self.blob_path(entry.sha256)))
        except CACHE_FAILURES as exc:
            self.faults.report("seal", exc, entry.path)
            return False

    def complete_blob(self, entry: FileEntry, block_size: int) -> Path | None:
        """The blob of a complete file (a plain local file with exactly its bytes), else None.

        For FUSE passthrough: callers that keep it open must ``pin_file`` it first."""
        if entry.size == 0 or not self.is_complete(entry, block_size):
            return None
        return self.blob_path(entry.sha256)

    def mark_complete(self, entry: FileEntry, block_size: int) -> bool:
        """Record ``entry`` complete if every block is indexed; its blob is fsynced first."""
        if not self.file_complete(entry, block_size):
            return False
        try:
            fd = self._open(entry.sha256, create=False)
            if fd is None:
                return False
            try:
                if os.fstat(fd).st_size != entry.size:
                    os.ftruncate(fd, entry.size)
                os.fdatasync(fd)
                seal = _seal_of(os.fstat(fd))
            finally:
                os.close(fd)
            with self._env.begin(db=self._complete_db, write=True) as txn:
                txn.put(_file_key(entry.sha256, block_size), seal)
        except CACHE_FAILURES as exc:
            self.faults.report("complete", exc, entry.path)
            return False
        return self.file_complete(entry, block_size)  # a block evicted meanwhile cleared it again

    def pin_file(self, entry: FileEntry, block_size: int) -> None:
        """Keep every block of ``entry`` from eviction (e.g. while its blob backs an open file)."""
        for i in range(entry.block_count(block_size)):
            self.pin(entry.key(i, block_size))

    def unpin_file(self, entry: FileEntry, block_size: int) -> None:
        for i in range(entry.block_count(block_size)):
            self.unpin(entry.key(i, block_size))

    def cached_bytes(self, entry: FileEntry, block_size: int) -> int:
        with self._lock:
            return sum(
                self._lru.get(entry.key(i, block_size), 0) for i in range(entry.block_count(block_size))
            )

    # -- data ------------------------------------------------------------------------

    def read(self, key: BlockKey, length: int) -> bytes | None:
        """The stored bytes of ``key`` (unverified), or None when absent."""
        if not self.contains(key):
            return None
        try:
            fd = self._open(key.sha256, create=False)
            if fd is None:
                self.discard(key)
                return None
            try:
                data = os.pread(fd, length, key.index * key.block_size)
            finally:
                os.close(fd)
        except OSError as exc:  # unreadable blob: forget the block, fetch it elsewhere
            self.faults.report("read", exc, key)
            self.discard(key)
            return None
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                self._touched[key] = time.time()
        return data if len(data) == length else None

    def prepare_blob(self, entry: FileEntry) -> int:
        """An fd of ``entry``'s blob with all its space allocated (``posix_fallocate``: one run
        of extents, and no write into it can fail for space later). The caller closes it.
        Raises OSError (ENOSPC, or EOPNOTSUPP where the filesystem cannot preallocate)."""
        fd = self._open(entry.sha256, create=True)
        assert fd is not None
        try:
            if entry.size:
                os.posix_fallocate(fd, 0, entry.size)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def remove_blob_if_unused(self, entry: FileEntry, block_size: int) -> None:
        """Delete ``entry``'s blob when no block of it is cached (e.g. after a failed preallocation)."""
        with self._lock:
            if any(entry.key(i, block_size) in self._lru for i in range(entry.block_count(block_size))):
                return
            self.blob_path(entry.sha256).unlink(missing_ok=True)
            self._blob_generation[entry.sha256] += 1

    def reserve(self, length: int) -> bool:
        """Reserve room for ``length`` bytes about to be written in place (evicting LRU blocks
        as needed); the room counts as used until ``commit`` or ``release``."""
        with self._lock:
            victims = self._reserve(length)
            if victims is not None:
                self.evicted_blocks += len(victims)
        if victims is None:
            return False
        self._forget(victims)
        return True

    def reserve_free(self, length: int) -> bool:
        """``reserve`` when the room is free now (no eviction, no I/O: safe on the trio
        thread); False, and nothing reserved, when making it would evict."""
        with self._lock:
            if self.used + length > self.limit:
                return False
            self.used += length
            return True

    def release(self, length: int) -> None:
        """Give back room ``reserve``d for a write that did not happen."""
        with self._lock:
            self.used -= length

    def commit(self, key: BlockKey, length: int) -> bool:
        """Index a block whose verified bytes are already in its blob, in the room ``reserve``d
        for it (it counts as verified, see ``pin_verified``). False (the reservation given back)
        when the index refused it."""
        try:
            with self._env.begin(db=self._db, write=True) as txn:
                txn.put(_encode(key), _VALUE.pack(length, time.time()))
        except CACHE_FAILURES as exc:
            self.faults.report("write", exc, key)
            self.release(length)
            return False
        with self._lock:
            new = key not in self._lru
            if new:
                self._lru[key] = length
            else:
                self.used -= length  # counted already: the reservation goes back
            self._verified.add(key)
        self.faults.write_ok()
        if new:
            self._notify([key], [])
        return True

    def put(self, key: BlockKey, data: bytes | bytearray | memoryview) -> bool:
        """Store a verified block; False (and nothing stored) when no room can be made or
        the disk or the index refused it (counted and logged by ``faults``)."""
        length = len(data)
        with self._lock:
            if key in self._lru or key in self._writing:
                return True
            victims = self._reserve(length)
            if victims is not None:
                self._writing.add(key)
                self.evicted_blocks += len(victims)
        if victims is None:
            log.warning("cache full (%d/%d bytes, all pinned): not caching %s", self.used, self.limit, key)
            return False
        try:
            self._forget(victims)
            if not self._write(key, data):
                self.release(length)
                return False
            if not self.commit(key, length):
                self._punch(key, length)  # bytes the bound does not count must not stay
                return False
            return True
        finally:
            with self._lock:
                self._writing.discard(key)

    def _write(self, key: BlockKey, data: bytes | bytearray | memoryview) -> bool:
        """The block's bytes into its blob; on failure nothing stays behind (reported)."""
        offset, length = key.index * key.block_size, len(data)
        try:
            fd = self._open(key.sha256, create=True)
            if fd is None:  # the blob directory vanished under us
                raise FileNotFoundError(errno.ENOENT, "cache blob directory is gone", str(self.blob_path(key.sha256)))
            try:
                written = os.pwrite(fd, data, offset)
                if written != length:
                    with contextlib.suppress(OSError):
                        punch_hole(fd, offset, written)
                    raise OSError(errno.ENOSPC, f"short write to cache ({written} of {length} bytes)")
            finally:
                os.close(fd)
        except CACHE_FAILURES as exc:
            self.faults.report("write", exc, key)
            return False
        return True

    def _punch(self, key: BlockKey, length: int) -> None:
        punch_file(self.blob_path(key.sha256), key.index * key.block_size, length, key)

    def discard(self, key: BlockKey) -> None:
        """Forget a block (e.g. it failed its hash) and free its bytes."""
        self._remove([key])

    # -- pinning and eviction ----------------------------------------------------------

    def pin(self, key: BlockKey) -> None:
        with self._lock:
            self._pins[key] += 1

    def unpin(self, key: BlockKey) -> None:
        with self._lock:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]

    def _reserve(self, length: int) -> list[tuple[BlockKey, int]] | None:
        """Under the lock: count ``length`` bytes as used, taking the LRU unpinned blocks out
        of the cache to make room. Returns those victims (for ``_forget``), None when the
        room cannot be made."""
        if length > self.limit:
            return None
        excess = self.used + length - self.limit
        victims: list[tuple[BlockKey, int]] = []
        if excess > 0:
            for key, size in self._lru.items():
                if excess <= 0:
                    break
                if self._pins.get(key):
                    continue
                victims.append((key, size))
                excess -= size
            if excess > 0:
                return None
        for key, size in victims:
            del self._lru[key]
            self._touched.pop(key, None)
            self._verified.discard(key)
            self.used -= size
        self.used += length
        return victims

    def _remove(self, keys: list[BlockKey]) -> None:
        if not keys:
            return
        removed: list[tuple[BlockKey, int]] = []
        with self._lock:
            for key in keys:
                size = self._lru.pop(key, None)
                self._touched.pop(key, None)
                self._verified.discard(key)
                if size is not None:
                    self.used -= size
                    removed.append((key, size))
        self._forget(removed)

    def _forget(self, blocks: list[tuple[BlockKey, int]]) -> None:
        """Delete index entries (and the complete marks of their files) and punch out the
        bytes of blocks already taken out of ``_lru``."""
        if not blocks:
            return
        try:
            with self._env.begin(db=self._db, write=True) as txn:
                for key, _ in blocks:
                    txn.delete(_encode(key))
                for file in {_file_key(key.sha256, key.block_size) for key, _ in blocks}:
                    txn.delete(file, db=self._complete_db)
        except CACHE_FAILURES as exc:  # a stale entry fails its hash after a restart
            self.faults.report("evict", exc, f"{len(blocks)} blocks")
        for key, size in blocks:
            try:
                self._punch(key, size)
            except OSError as exc:
                self.faults.report("evict", exc, key)
        self._notify([], [key for key, _ in blocks])

    # -- housekeeping --------------------------------------------------------------------

    def flush_usage(self) -> None:
        """Persist last-use times of recently read blocks (one transaction)."""
        with self._lock:
            touched, self._touched = self._touched, {}
            sizes = {k: self._lru[k] for k in touched if k in self._lru}
        try:
            if sizes:
                with self._env.begin(db=self._db, write=True) as txn:
                    for key, size in sizes.items():
                        txn.put(_encode(key), _VALUE.pack(size, touched[key]))
            self._env.sync(True)  # periodic durability point for the index
        except CACHE_FAILURES as exc:  # last-use times are advisory: LRU order survives in memory
            self.faults.report("flush", exc)

    def close(self) -> None:
        self.flush_usage()
        self._env.close()
