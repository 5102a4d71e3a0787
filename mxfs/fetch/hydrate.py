"""Hydration: whole files into their cache blobs, many blocks at once, each verified once.

For each file that is not yet complete the engine preallocates the blob
(``posix_fallocate``: its space is one run of extents, and no later write can fail for
space) and fetches the missing blocks in parallel through the chain's tiers (peers,
origin, server). A tier with ``fetch_to_file`` (the server's data plane) has a block
spliced from its socket into its place in the blob (one copy, by the kernel), where it is
hashed once through a read-only mapping; a tier that returns bytes has them hashed and
written with one ``pwrite``. Only then is the block indexed, and its disk writes started
(``mxfs.cache.writeback``: the final sync then has little left to write, instead of
flushing the whole file at once while other reads of the disk wait behind it); when every
block is indexed the blob is synced and the file recorded complete
(``BlockCache.mark_complete``): the FUSE layer may then hand the blob to the kernel
(passthrough).

Failure never looks like completion: a block that failed its hash or never arrived is
not indexed, so the file is not complete; a blob the filesystem cannot preallocate (ENOSPC)
fails the file before anything is written; a filesystem without ``fallocate`` support falls
back to the chain's ordinary writes.

Concurrent readers of a block being hydrated wait for it through the chain's single
flight (``FetchChain.claim``) and then read it from the cache; a reader of a block the job
has not reached yet has it fetched now (``expedite``) instead of beside the job.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from mxfs.cache.writeback import start_writeback
from mxfs.errors import BlockUnavailable, MxfsError, SourceError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.threads import in_thread
from mxfs.manifest.hashing import block_ok
from mxfs.manifest.model import FileEntry, Manifest

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
EXPEDITED = 4  # blocks readers may have fetched ahead of a job's order at once
HASH_WINDOW = 8  # blocks of a lazy file whose hashes one GetBlockHashes asks for ahead of hydration


class CacheFull(MxfsError):
    """The node cache has no room for a file being hydrated."""


@dataclass
class Progress:
    """Bytes hydrated so far (thread-safe reads through ``snapshot``)."""

    total_bytes: int = 0
    done_bytes: int = 0
    total_blocks: int = 0
    done_blocks: int = 0
    complete_files: int = 0
    files: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def advance(self, nbytes: int, blocks: int = 1) -> None:
        with self.lock:
            self.done_bytes += nbytes
            self.done_blocks += blocks

    def rate(self) -> float:
        """Bytes per second since the start."""
        return self.done_bytes / max(1e-6, time.monotonic() - self.started)

    def eta_s(self) -> float:
        rate = self.rate()
        return (self.total_bytes - self.done_bytes) / rate if rate > 0 else math.inf


@dataclass
class _Job:
    """The blob of a file being hydrated (fd, read-only mapping to verify what lands), and how
    many block writes use it right now."""

    fd: int
    readable: mmap.mmap
    users: int = 0
    idle: trio.Event = field(default_factory=trio.Event)


class Hydrator:
    """Fills the cache blobs of whole files through ``chain`` (see the module docstring)."""

    def __init__(self, chain: FetchChain, concurrency: int = DEFAULT_CONCURRENCY,
                 limiter: trio.CapacityLimiter | None = None) -> None:
        self.chain = chain
        self.cache = chain.cache
        self.concurrency = max(1, concurrency)
        self.limiter = limiter  # shared with readahead so foreground reads keep priority
        self.in_place_blocks = 0  # blocks received into their blob (for tests and metrics)
        self._jobs: dict[str, _Job] = {}  # content id -> the in-place hydration of that file
        self._write_lock = threading.Lock()
        self._expedited = trio.CapacityLimiter(EXPEDITED)

    async def hydrate(self, manifest: Manifest, progress: Progress | None = None,
                      on_file: Callable[[FileEntry], None] | None = None) -> list[str]:
        """Hydrate every file of ``manifest``; returns the paths that did not complete (the
        first error of each is logged). ``on_file`` is called for each file completed."""
        progress = progress or Progress()
        with progress.lock:
            progress.total_bytes = manifest.total_size
            progress.total_blocks = manifest.total_blocks
            progress.files = len(manifest.files)
        failed: list[str] = []
        for entry in sorted(manifest.files, key=lambda f: f.size):  # configs first: a loader starts sooner
            try:
                await self.hydrate_file(manifest, entry, progress)
            except MxfsError as exc:
                log.warning("hydration of %s/%s failed: %s", manifest.name, entry.path, exc)
                failed.append(f"{entry.path}: {exc}")
                continue
            with progress.lock:
                progress.complete_files += 1
            if on_file is not None:
                on_file(entry)
        return failed

    async def hydrate_file(self, manifest: Manifest, entry: FileEntry, progress: Progress | None = None) -> None:
        """Every block of ``entry`` verified in its blob and the file recorded complete, or raise."""
        progress = progress or Progress()
        bs = manifest.block_size
        if entry.size == 0 or await in_thread(self.cache.is_complete, entry, bs):
            progress.advance(entry.size, entry.block_count(bs))
            return
        if entry.size > self.cache.limit:
            raise CacheFull(f"{entry.path} ({entry.size} bytes) is larger than the node cache ({self.cache.limit})")
        missing = [i for i in range(entry.block_count(bs)) if not self.cache.contains(entry.key(i, bs))]
        have = entry.size - sum(entry.block_span(i, bs)[1] for i in missing)
        progress.advance(have, entry.block_count(bs) - len(missing))
        if missing:
            try:
                fd = await in_thread(self.cache.prepare_blob, entry)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    await in_thread(self.cache.remove_blob_if_unused, entry, bs)
                    raise CacheFull(f"no space for {entry.path} ({entry.size} bytes) in the node cache") from exc
                log.info("cannot preallocate %s (%s): hydrating through ordinary writes", entry.path, exc)
                await self._through_chain(manifest, entry, missing, progress)
            else:
                try:
                    await self._in_place(manifest, entry, missing, fd, progress)
                finally:
                    os.close(fd)
        # blocks a reader fetched meanwhile (the job joined those flights) may still be on their
        # way to the cache in the chain's background writes: let them land before checking
        await self.chain.drain()
        if not await in_thread(self.cache.mark_complete, entry, bs):
            raise BlockUnavailable(f"{entry.path}: blocks left the cache while it was hydrated")

    # -- the two ways to fill a blob ----------------------------------------------------------

    async def _through_chain(self, manifest: Manifest, entry: FileEntry, missing: list[int],
                             progress: Progress) -> None:
        async def one(index: int) -> None:
            await self.chain.block(manifest, entry, index)
            progress.advance(entry.block_span(index, manifest.block_size)[1])

        await self._each(missing, one)
        await self.chain.drain()

    async def _in_place(self, manifest: Manifest, entry: FileEntry, missing: list[int], fd: int,
                        progress: Progress) -> None:
        job = self._jobs[entry.sha256] = _Job(fd, mmap.mmap(fd, entry.size, mmap.MAP_SHARED, mmap.PROT_READ))
        try:
            async def one(index: int) -> None:
                await self._one_in_place(job, manifest, entry, index)
                progress.advance(entry.block_span(index, manifest.block_size)[1])

            await self._with_hash_windows(manifest, entry, missing, one)
        finally:
            del self._jobs[entry.sha256]
            with trio.CancelScope(shield=True):
                while job.users:  # an expedited block still writes through the fd
                    await job.idle.wait()
            job.readable.close()

    async def _one_in_place(self, job: _Job, manifest: Manifest, entry: FileEntry, index: int) -> None:
        job.users += 1
        try:
            await self._block_in_place(job, manifest, entry, index)
        finally:
            job.users -= 1
            if not job.users:
                job.idle.set()
                job.idle = trio.Event()

    async def expedite(self, manifest: Manifest, entry: FileEntry, index: int) -> bool:
        """Put block ``index`` of a file being hydrated in place now, ahead of the job's order
        (a reader waits for it). False when no hydration of that file is running."""
        job = self._jobs.get(entry.sha256)
        if job is None:
            return False
        async with self._expedited:  # readers never fan out past a few extra fetches
            await self._one_in_place(job, manifest, entry, index)
        return True

    async def _with_hash_windows(self, manifest: Manifest, entry: FileEntry, missing: list[int],
                                 fn: Callable) -> None:
        """``_each(missing, fn)``; for a lazy file the expected hashes are asked ahead in
        windows of ``HASH_WINDOW`` blocks, at most two windows ahead of the workers, so the
        server reads a window's blocks from the origin side by side instead of one per ask."""
        hashes = self.chain.hashes
        if hashes is None or not entry.lazy:
            await self._each(missing, fn)
            return
        windows = [missing[k:k + HASH_WINDOW] for k in range(0, len(missing), HASH_WINDOW)]
        reached = [trio.Event() for _ in windows]

        async def pump() -> None:
            async with trio.open_nursery() as asks:
                for k, window in enumerate(windows):
                    if k >= 2:
                        await reached[k - 1].wait()
                    asks.start_soon(hashes.prefetch, manifest, entry, window[0], window[-1] - window[0] + 1)

        async def started(position: int, index: int) -> None:
            if position % HASH_WINDOW == 0:
                reached[position // HASH_WINDOW].set()
            await fn(index)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            await self._each(missing, started, positions=True)
            nursery.cancel_scope.cancel()

    async def _each(self, indices: list[int], fn: Callable, positions: bool = False) -> None:
        """``fn(i)`` (``fn(position, i)`` with ``positions``) for every index, in order,
        ``concurrency`` at a time; the first error cancels the rest."""
        queue = iter(enumerate(indices))
        errors: list[MxfsError] = []

        async def worker(scope: trio.CancelScope) -> None:
            try:
                for position, index in queue:
                    args = (position, index) if positions else (index,)
                    if self.limiter is not None:
                        async with self.limiter:
                            await fn(*args)
                    else:
                        await fn(*args)
            except MxfsError as exc:
                errors.append(exc)
                scope.cancel()

        async with trio.open_nursery() as nursery:
            for _ in range(min(self.concurrency, len(indices))):
                nursery.start_soon(worker, nursery.cancel_scope)
        if errors:
            raise errors[0]

    # -- one block ----------------------------------------------------------------------------

    async def _block_in_place(self, job: _Job, manifest: Manifest, entry: FileEntry, index: int) -> None:
        key = entry.key(index, manifest.block_size)
        while (flight := self.chain.claim(key)) is None:  # someone is fetching it now: wait for them
            await self.chain.settle([key])
        if self.cache.contains(key):
            self.chain.release(key, flight)
            return
        offset, length = entry.block_span(index, manifest.block_size)
        self.cache.pin(key)
        try:
            if self.cache.contains(key):
                return
            if not self.cache.reserve_free(length) and not await in_thread(self.cache.reserve, length):
                raise CacheFull(f"node cache full (all pinned): cannot hydrate {entry.path}")
            try:
                hot = self.chain.hot.get(key)  # verified by a reader moments ago, its cache write still queued
                if hot is not None and len(hot) == length:
                    await in_thread(_write_checked, self._write_lock, job.fd, offset, length, hot, "", b"", True)
                else:
                    expected = await self.chain.expected(manifest, entry, index)
                    if self.chain.hashes is not None and entry.lazy:
                        entry = self.chain.hashes.view(manifest, entry)  # tiers that verify need the hashes
                    await self._receive(job, manifest, entry, index, expected)
            except BaseException:
                self.cache.release(length)  # the reserved room was not used
                raise
            if not await in_thread(self.cache.commit, key, length):  # the reservation is used or given back
                raise CacheFull(f"node cache index refused block {index} of {entry.path} (see cache errors)")
        finally:
            self.cache.unpin(key)
            self.chain.release(key, flight)

    async def _receive(self, job: _Job, manifest: Manifest, entry: FileEntry, index: int, expected: bytes) -> None:
        """Try the chain's tiers in order until one's bytes verify; they go to the blob at the
        block's offset. A tier with ``fetch_to_file`` (the server's data plane) writes them
        there itself and hashes them in the same worker thread (one hop per block: a worker
        round trip costs about 0.1 ms of CPU here); bytes from any other tier are hashed and
        written with one ``pwrite``."""
        algorithm = manifest.block_hash
        offset, length = entry.block_span(index, manifest.block_size)
        errors: list[str] = []
        for tier in self.chain.tiers:
            start = time.monotonic()
            hedge = getattr(tier, "hedge_after", None)  # a slow tier hands over to the next one
            limit = self.chain.timeout_s if hedge is None or tier is self.chain.tiers[-1] \
                else min(self.chain.timeout_s, hedge())
            try:
                with trio.fail_after(limit):
                    fetch_to_file = getattr(tier, "fetch_to_file", None)
                    if fetch_to_file is not None:
                        ok = await fetch_to_file(manifest, entry, index, job.fd, self._write_lock, functools.partial(
                            _mapped_ok, job.readable, job.fd, offset, length, algorithm, expected))
                    else:
                        data = await tier.fetch(manifest, entry, index)
                        ok = await in_thread(_write_checked, self._write_lock, job.fd, offset, length, data,
                                             algorithm, expected, getattr(tier, "verifies", False))
            except trio.TooSlowError:
                if limit < self.chain.timeout_s:
                    self.chain.stats.hedged(tier.name)
                else:
                    self.chain.stats.failed(tier.name, "timeout")
                errors.append(f"{tier.name}: timed out after {limit:g}s")
                continue
            except (BlockUnavailable, SourceError) as exc:
                self.chain.stats.failed(tier.name, type(exc).__name__)
                errors.append(f"{tier.name}: {exc}")
                continue
            if not ok:
                self.chain.stats.bad_hash(tier.name)
                tier.quarantine(manifest, entry, index)
                log.warning("block %d of %s from %s failed verification; skipping tier", index, entry.path, tier.name)
                errors.append(f"{tier.name}: bad bytes")
                continue
            self.chain.stats.got(tier.name, length, time.monotonic() - start)
            if fetch_to_file is not None:
                self.in_place_blocks += 1
            return
        raise BlockUnavailable(f"block {index} of {manifest.name}/{entry.path} unavailable: "
                               + "; ".join(errors or ["no tiers"]))


def _mapped_ok(readable: mmap.mmap, fd: int, offset: int, length: int, algorithm: str, expected: bytes) -> bool:
    """True when the ``length`` bytes at ``offset`` of the blob hash to ``expected``, read
    through the job's read-only mapping of the page cache they were just written to: no copy,
    and no mapping made and torn down per block (each unmap costs the other CPUs a TLB flush).
    Good bytes have their disk writes started (``fd``) in the same worker."""
    with memoryview(readable) as view, view[offset:offset + length] as block:
        ok = block_ok(algorithm, block, expected)
    if ok:
        start_writeback(fd, offset, length)
    return ok


def _write_checked(lock: threading.Lock, fd: int, offset: int, length: int, data: bytes | bytearray | memoryview,
                   algorithm: str, expected: bytes, verified: bool) -> bool:
    """Verify ``data`` (unless ``verified``) and write it to the blob at ``offset`` (a worker
    thread). False for bytes that fail; a disk error fails the file (``CacheFull``).

    One write at a time (``lock``): buffered writes to one file serialize on its inode lock
    anyway, and the kernel's waiters spin on it (measured: a third of the daemon's CPU on a
    cold read went to spinning); waiting on a Python lock sleeps instead."""
    if len(data) != length or not (verified or block_ok(algorithm, data, expected)):
        return False
    view = memoryview(data)
    try:
        with lock:
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
    except OSError as exc:
        raise CacheFull(f"cannot write to the node cache: {exc}") from exc
    start_writeback(fd, offset - length, length)
    return True
