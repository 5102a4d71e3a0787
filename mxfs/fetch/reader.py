"""Turns (file, offset, size) reads into block fetches, with per-handle sequential readahead.

Readahead follows the reader block by block: the window doubles while reads stay
sequential (up to ``max_blocks``) and resets on a seek. It runs in the background with
its own limiter so foreground reads keep priority. A reader that stays sequential until
the window is full hands the rest of its file to the hydrator (with ``hydrator``): the
file is then filled in place and ends complete, so its next open can be passthrough.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from mxfs.errors import MxfsError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.hydrate import Hydrator
from mxfs.fetch.supervise import guarded
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

    async def read(self, handle: OpenFile, offset: int, size: int) -> bytes | memoryview:
        m, entry = handle.manifest, handle.entry
        bs = m.block_size
        blocks = entry.blocks_for(offset, size, bs)
        if not blocks:
            return b""
        end = min(entry.size, offset + size)
        self._readahead(handle, offset, blocks[-1])
        handle.next_offset = end
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

    def _readahead(self, handle: OpenFile, offset: int, last_block: int) -> None:
        if self._nursery is None or self.max_blocks == 0:
            return
        bs = handle.manifest.block_size
        near = handle.next_offset - bs <= offset <= handle.next_offset + 2 * bs
        if not near and offset != 0:  # a seek: restart the window
            handle.window = 0
            return
        handle.window = min(self.max_blocks, max(1, handle.window * 2))
        m, entry = handle.manifest, handle.entry
        if (self.hydrator is not None and handle.window == self.max_blocks and entry.sha256 not in self._hydrating
                and entry.block_count(m.block_size) > 2 * self.max_blocks
                and entry.size <= self.chain.cache.limit // 2):
            self._hydrating.add(entry.sha256)
            self._nursery.start_soon(guarded, self.chain.stats, "hydrate", self._hydrate, m, entry)
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
