"""Turns (file, offset, size) reads into block fetches, with per-handle sequential readahead.

Readahead follows the reader block by block: the window doubles while reads stay
sequential (up to ``max_blocks``) and resets on a seek. It runs in the background with
its own limiter so foreground reads keep priority. A reader that stays sequential until
the window is full hands the rest of its file to the hydrator (with ``hydrator``): the
file is then filled in place and ends complete, so its next open can be passthrough.

A read whose blocks all lie verified in the cache blob (hydration wrote them, or a read
checked them, in this process) is answered as a ``BlobSpan``: the caller hands the range
on from a mapping of the blob (the FUSE session's reply is one kernel copy from it) and no
byte passes through Python; the blocks stay pinned until the caller calls ``release``.
Other reads return bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from mxfs.errors import MxfsError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.hydrate import Hydrator
from mxfs.fetch.supervise import guarded
from mxfs.fetch.threads import in_thread
from mxfs.fileio import BlobMap
from mxfs.manifest.model import BlockKey, FileEntry, Manifest

log = logging.getLogger(__name__)


@dataclass
class OpenFile:
    """Per-handle read state."""

    manifest: Manifest
    entry: FileEntry
    next_offset: int = -1
    window: int = 0
    scheduled: set[int] = field(default_factory=set)
    touched: int = 0  # blocks entered by reads through this handle, in any order
    last_block: int = -1
    blob: BlobMap | None = None  # the file's cache blob (read-only fd, owned here; its mapping), from the first span
    blob_generation: int = -1
    retired_fds: list[int] = field(default_factory=list)


@dataclass
class BlobSpan:
    """``length`` bytes at ``offset`` of ``blob``, verified; ``release`` unpins them."""

    blob: BlobMap
    offset: int
    length: int
    release: Callable[[], None]


class BlockReader:
    def __init__(self, chain: FetchChain, max_blocks: int, background_fetches: int = 4,
                 hydrator: Hydrator | None = None) -> None:
        self.chain = chain
        self.max_blocks = max_blocks
        self.background = trio.CapacityLimiter(background_fetches)
        self.hydrator = hydrator
        self._nursery: trio.Nursery | None = None
        self._pending: set[BlockKey] = set()
        self._hydrating: set[str] = set()  # content ids of files a sequential reader is hydrating

    def start(self, nursery: trio.Nursery) -> None:
        """Background readahead runs in ``nursery`` (owned by the daemon)."""
        self._nursery = nursery

    async def read(self, handle: OpenFile, offset: int, size: int) -> bytes | memoryview | BlobSpan:
        m, entry = handle.manifest, handle.entry
        bs = m.block_size
        blocks = entry.blocks_for(offset, size, bs)
        if not blocks:
            return b""
        end = min(entry.size, offset + size)
        handle.touched += len(blocks) - (blocks[0] == handle.last_block)
        handle.last_block = blocks[-1]
        self._readahead(handle, offset, blocks[-1])
        handle.next_offset = end
        keys = [entry.key(i, bs) for i in blocks]
        span = await self._span(handle, keys, offset, end)
        if span is None and entry.sha256 in self._hydrating:  # have hydration put them in place first
            await self._expedite(m, entry, blocks)
            span = await self._span(handle, keys, offset, end)
        if span is not None:
            return span
        if len(blocks) == 1:
            data = await self.chain.block(m, entry, blocks[0])
            start = offset - blocks[0] * bs
            return memoryview(data)[start : start + (end - offset)]
        parts: dict[int, bytes | bytearray] = {}

        async def one(i: int) -> None:
            parts[i] = await self.chain.block(m, entry, i)

        async with trio.open_nursery() as nursery:
            for i in blocks:
                nursery.start_soon(one, i)
        out = bytearray(end - offset)
        pos = 0
        for i in blocks:
            b_start = i * bs
            lo = max(offset, b_start) - b_start
            hi = min(end, b_start + len(parts[i])) - b_start
            out[pos : pos + hi - lo] = memoryview(parts[i])[lo:hi]
            pos += hi - lo
        return out

    async def _expedite(self, m: Manifest, entry: FileEntry, blocks: list[int]) -> None:
        """Blocks of a file being hydrated: written in place now (or waited for, when already
        on their way); a failure is left to the ordinary read that follows."""
        assert self.hydrator is not None

        async def one(index: int) -> None:
            try:
                if not await self.hydrator.expedite(m, entry, index):
                    await self.chain.settle([entry.key(index, m.block_size)])
            except MxfsError as exc:
                log.debug("expedited block %d of %s: %s", index, entry.path, exc)

        async with trio.open_nursery() as nursery:
            for index in blocks:
                if not self.chain.cache.is_verified(entry.key(index, m.block_size)):
                    nursery.start_soon(one, index)

    async def _span(self, handle: OpenFile, keys: list[BlockKey], offset: int, end: int) -> BlobSpan | None:
        cache = self.chain.cache
        generation = cache.pin_verified(keys)
        if generation is None:
            return None
        if handle.blob is None or handle.blob_generation != generation:
            opened = await in_thread(cache.open_blob, handle.entry.sha256)
            if opened is None or opened[1] != generation:
                cache.unpin_all(keys)
                if opened is not None:
                    os.close(opened[0])
                return None
            if handle.blob is not None and handle.blob_generation == generation:
                os.close(opened[0])  # a concurrent read opened it first
            else:
                if handle.blob is not None:  # spans in flight may still read the old one (their own mapping)
                    handle.retired_fds.append(handle.blob.fd)
                handle.blob, handle.blob_generation = BlobMap(opened[0]), opened[1]
        assert handle.blob is not None
        return BlobSpan(handle.blob, offset, end - offset, lambda: cache.unpin_all(keys))

    def close(self, handle: OpenFile) -> None:
        """Close ``handle``'s blob fds (at release: no span of them is in use any more)."""
        for fd in [*handle.retired_fds, *([handle.blob.fd] if handle.blob is not None else [])]:
            os.close(fd)
        handle.retired_fds.clear()
        handle.blob = None

    def _readahead(self, handle: OpenFile, offset: int, last_block: int) -> None:
        if self._nursery is None or self.max_blocks == 0:
            return
        bs = handle.manifest.block_size
        near = handle.next_offset - bs <= offset <= handle.next_offset + 2 * bs
        if not near and offset != 0:  # a seek: restart the window
            handle.window = 0
        else:
            handle.window = min(self.max_blocks, max(1, handle.window * 2))
        m, entry = handle.manifest, handle.entry
        # hand the file to hydration once a reader went sequential for a full window, or read
        # many blocks in any order (a loader walking tensors by name through mmap)
        wants_file = handle.window == self.max_blocks or handle.touched >= 4 * self.max_blocks
        if (self.hydrator is not None and wants_file and entry.sha256 not in self._hydrating
                and entry.block_count(m.block_size) > 2 * self.max_blocks
                and entry.size <= self.chain.cache.limit // 2):
            self._hydrating.add(entry.sha256)
            self._nursery.start_soon(guarded, self.chain.stats, "hydrate", self._hydrate, m, entry)
        if handle.window == 0:
            return
        if entry.sha256 in self._hydrating:  # hydration fetches ahead, in order: no readahead beside it
            return
        count = entry.block_count(m.block_size)
        for i in range(last_block + 1, min(count, last_block + 1 + handle.window)):
            key = entry.key(i, m.block_size)
            if key in self._pending or self.chain.hot.get(key) is not None:
                continue
            self._pending.add(key)
            self._nursery.start_soon(guarded, self.chain.stats, "readahead", self._fetch_ahead, m, entry, i, key)

    async def _hydrate(self, m: Manifest, entry: FileEntry) -> None:
        assert self.hydrator is not None
        try:
            await self.hydrator.hydrate_file(m, entry)
        except MxfsError as exc:  # readers fetch what they need themselves
            log.info("hydration of %s after a sequential read stopped: %s", entry.path, exc)
        finally:
            self._hydrating.discard(entry.sha256)

    async def _fetch_ahead(self, m: Manifest, entry: FileEntry, index: int, key: BlockKey) -> None:
        try:
            async with self.background:
                await self.chain.block(m, entry, index)
        except MxfsError as exc:  # a foreground read will report it
            log.debug("readahead of %s failed: %s", key, exc)
        finally:
            self._pending.discard(key)
