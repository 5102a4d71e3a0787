"""How each open file is served: through the fetch chain, from its blob, or by the kernel.

Rules (the kernel's passthrough rules, plus ours):

* A file whose every block is cached *and verified in this daemon's lifetime* is served
  from its cache blob: with kernel passthrough when the session was granted it (reads and
  mmap never reach the daemon), else by copying the blob into READ replies (one kernel copy
  from a mapping of it, see ``mxfs.fileio.BlobMap``).
* All opens of one inode share one mode while any is open (the kernel refuses to mix
  cached and passthrough I/O on an inode): a file opened while incomplete stays cached
  until its last release; the next open after it completed gets the blob.
* One backing file per inode, registered at the first open and closed at the last release.
* While an inode is served from its blob, every block of it is pinned: eviction never
  punches a blob the kernel (or a reply) reads from.
* Before the first blob open of a file in this lifetime, every block is checked against
  its hash (in worker threads): the kernel never shows us those reads again.
* No double page cache: when an inode that was read in cached mode goes passthrough, its
  FUSE page cache is dropped (the backing file's cache serves it from then on); blob-mode
  replies drop the blob's pages after the copy (the FUSE inode keeps them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import trio

from mxfs.cache.blocks import BlockCache
from mxfs.errors import MxfsError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.threads import in_thread
from mxfs.fileio import BlobMap
from mxfs.fuse.interface import BackingFiles, Notifier
from mxfs.fuse.stats import BLOB, CACHED, PASSTHROUGH, FuseStats
from mxfs.manifest.model import BlockKey, FileEntry, Manifest

log = logging.getLogger(__name__)

VERIFY_PARALLEL = 4


@dataclass
class InodeMode:
    """The shared mode of an inode's open files."""

    mode: str = CACHED
    opens: int = 0
    blob: BlobMap | None = None  # the blob's fd (owned here) and the mapping BLOB-mode reads are copied from
    backing_id: int | None = None
    pinned: tuple[FileEntry, int] | None = None  # (entry, block size) while its blocks are pinned
    was_cached: bool = False  # its FUSE page cache may hold pages from cached-mode reads
    decided: trio.Event = field(default_factory=trio.Event)  # set once the first open chose


class FileModes:
    """Chooses and tracks the mode of every open inode."""

    def __init__(self, cache: BlockCache, chain: FetchChain, stats: FuseStats) -> None:
        self.cache = cache
        self.chain = chain
        self.stats = stats
        self.backing: BackingFiles | None = None  # set once the session was granted passthrough
        self.notifier: Notifier | None = None
        self._inodes: dict[int, InodeMode] = {}
        self._verified: set[str] = set()  # content ids whose blob passed a full check
        self._verifying: dict[str, trio.Event] = {}
        cache.listeners.append(self._on_cache_change)

    def _on_cache_change(self, added: list[BlockKey], removed: list[BlockKey]) -> None:
        for key in removed:  # any thread: set.discard is atomic
            self._verified.discard(key.sha256)

    def mode_of(self, inode: int) -> InodeMode | None:
        return self._inodes.get(inode)

    # -- open / release ----------------------------------------------------------------------

    async def open(self, inode: int, manifest: Manifest, entry: FileEntry) -> InodeMode:
        state = self._inodes.get(inode)
        if state is not None and state.opens:
            state.opens += 1  # join the mode the first open chose (waiting for its choice)
            try:
                await state.decided.wait()
            except BaseException:
                self._release_state(inode, state)
                raise
            self.stats.opens.labels(state.mode).inc()
            return state
        state = state or InodeMode()
        self._inodes[inode] = state
        state.opens = 1  # claimed before any await: concurrent opens join this mode
        state.mode = CACHED
        state.decided = trio.Event()
        try:
            if await self._verified_complete(manifest, entry):
                self._serve_from_blob(inode, state, manifest, entry)
            if state.mode == PASSTHROUGH and state.was_cached:
                await self._drop_fuse_pages(inode)
                state.was_cached = False
        except BaseException:
            state.decided.set()
            self._release_state(inode, state)
            raise
        if state.mode == CACHED:
            state.was_cached = True
        state.decided.set()
        self.stats.opens.labels(state.mode).inc()
        return state

    def release(self, inode: int) -> None:
        state = self._inodes.get(inode)
        if state is not None:
            self._release_state(inode, state)

    def _release_state(self, inode: int, state: InodeMode) -> None:
        state.opens -= 1
        if state.opens > 0:
            return
        if state.backing_id is not None and self.backing is not None:
            try:
                self.backing.close(state.backing_id)
            except OSError as exc:
                log.warning("closing backing file of inode %d: %s", inode, exc)
        if state.blob is not None:
            os.close(state.blob.fd)
        if state.pinned is not None:
            self.cache.unpin_file(*state.pinned)
        state.backing_id = state.blob = None
        state.pinned = None
        state.mode = CACHED

    def _serve_from_blob(self, inode: int, state: InodeMode, manifest: Manifest, entry: FileEntry) -> None:
        bs = manifest.block_size
        self.cache.pin_file(entry, bs)
        state.pinned = (entry, bs)
        if not self.cache.file_complete(entry, bs):  # evicted between the check and the pins
            return
        try:
            state.blob = BlobMap(os.open(self.cache.blob_path(entry.sha256), os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            log.warning("cannot open the blob of %s: %s", entry.path, exc)
            return
        state.mode = BLOB
        if self.backing is None:
            return
        if os.fstat(state.blob.fd).st_size != entry.size:  # the kernel would read to the blob's end
            log.warning("blob of %s is not exactly the file's size; serving it from the daemon", entry.path)
            return
        try:
            state.backing_id = self.backing.open(state.blob.fd)
        except OSError as exc:  # e.g. no CAP_SYS_ADMIN: replies from the blob instead
            log.warning("passthrough refused for %s (%s); serving it from the blob", entry.path, exc)
            return
        state.mode = PASSTHROUGH

    async def _drop_fuse_pages(self, inode: int) -> None:
        """Its pages now live in the backing file's cache: drop the FUSE inode's copy.

        In a worker thread, as the kernel locks the pages while it drops them.
        """
        if self.notifier is None:
            return
        try:
            await in_thread(self.notifier.invalidate, inode)
        except OSError as exc:
            log.debug("invalidate inode %d: %s", inode, exc)

    # -- verification --------------------------------------------------------------------------

    async def _verified_complete(self, manifest: Manifest, entry: FileEntry) -> bool:
        """Every block cached and its blob known good: sealed by the cache when it was recorded
        complete from verified blocks and untouched since, else checked now (once a lifetime)
        and sealed."""
        if entry.size == 0 or not self.cache.file_complete(entry, manifest.block_size):
            return False
        while entry.sha256 not in self._verified:
            pending = self._verifying.get(entry.sha256)
            if pending is not None:
                await pending.wait()
                return entry.sha256 in self._verified
            done = self._verifying[entry.sha256] = trio.Event()
            try:
                bs = manifest.block_size
                if await in_thread(self.cache.sealed, entry, bs):
                    self._verified.add(entry.sha256)
                    self.stats.sealed.inc()
                elif await self._check_all(manifest, entry):
                    self._verified.add(entry.sha256)
                    self.stats.verified.inc()
                    await in_thread(self.cache.mark_complete, entry, bs)  # seal it for the next opens
                return entry.sha256 in self._verified
            finally:
                del self._verifying[entry.sha256]
                done.set()
        return True

    async def _check_all(self, manifest: Manifest, entry: FileEntry) -> bool:
        count = entry.block_count(manifest.block_size)
        bad: list[int] = []
        next_index = iter(range(count))

        async def worker() -> None:
            for index in next_index:
                try:
                    ok = await self.chain.check_cached(manifest, entry, index)
                except MxfsError as exc:  # e.g. lazy hashes unknown while the server is away
                    log.info("cannot verify block %d of %s: %s", index, entry.path, exc)
                    ok = False
                if not ok:
                    bad.append(index)

        async with trio.open_nursery() as nursery:
            for _ in range(min(VERIFY_PARALLEL, count)):
                nursery.start_soon(worker)
        if bad:
            log.warning("%s: %d cached block(s) failed verification; serving it through the chain",
                        entry.path, len(bad))
        return not bad
