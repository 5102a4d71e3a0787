"""Swarm fill: a node in a cold swarm hydrates the whole model, starting where others do not.

Measured on the emulated fleet (tests/support/fleet.py, docs/peers.md): when every node reads
a model front to back, all of them want the same block at the same moment, so that block's
owner uploads it N-1 times while every other node's uplink idles; 8 nodes took 2.7x one node.
A node that joins a model's swarm therefore also fetches every block in the background, in an
order rotated by its rank among the swarm's members (node k of N starts k/N of the way in).
At any moment the fleet then wants N different parts of the model: each block leaves the
server once (its owner's fetch), every uplink serves about one copy, and the reader finds
most blocks already local. Fetches go through the chain, so they share the reader's
single-flight, verification and cache; a few in flight per node keep its link busy without
starving the reader.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from mxfs.block_peers.registry import PeerNode
from mxfs.errors import MxfsError
from mxfs.manifest.model import FileEntry, Manifest

log = logging.getLogger(__name__)

FILL_CONCURRENCY = 2
MAX_FILLS = 64

#: fetch one block through the chain (cache, peers, server) and cache it
FetchBlock = Callable[[Manifest, FileEntry, int], Awaitable[object]]
#: whether a block is already in the local cache
IsCached = Callable[[Manifest, FileEntry, int], bool]


def fill_order(manifest: Manifest, me: str, members: Sequence[PeerNode]) -> list[tuple[FileEntry, int]]:
    """Every block of ``manifest``, rotated to start at ``me``'s share of the swarm."""
    blocks = [(e, i) for e in manifest.files for i in range(e.block_count(manifest.block_size))]
    ids = sorted({m.node_id for m in members} | {me})
    start = len(blocks) * ids.index(me) // len(ids)
    return blocks[start:] + blocks[:start]


class SwarmFill:
    """Starts one background fill per model this node cold-reads in a swarm."""

    def __init__(self, me: str, concurrency: int = FILL_CONCURRENCY) -> None:
        self.me = me
        self.concurrency = concurrency
        self._nursery: trio.Nursery | None = None
        self._fetch: FetchBlock | None = None
        self._is_cached: IsCached | None = None
        self._started: set[tuple[str, str]] = set()
        self.done_blocks = 0

    def start(self, nursery: trio.Nursery, fetch: FetchBlock, is_cached: IsCached) -> None:
        self._nursery, self._fetch, self._is_cached = nursery, fetch, is_cached

    def request(self, manifest: Manifest, members: Sequence[PeerNode]) -> None:
        """Fill ``manifest`` in the background (once per model while this daemon runs)."""
        ref = (manifest.name, manifest.revision)
        if self._nursery is None or ref in self._started or len(self._started) >= MAX_FILLS:
            return
        self._started.add(ref)
        order = fill_order(manifest, self.me, members)
        log.info("swarm fill of %s@%s: %d blocks, %d members, starting at block %d",
                 manifest.name, manifest.revision, len(order), len(members) or 1,
                 0 if not order else order[0][1])
        self._nursery.start_soon(self._run, manifest, order)

    async def _run(self, manifest: Manifest, order: list[tuple[FileEntry, int]]) -> None:
        send, receive = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            for _ in range(self.concurrency):
                nursery.start_soon(self._worker, manifest, receive.clone())
            async with send:
                for item in order:
                    await send.send(item)
            await receive.aclose()
        log.info("swarm fill of %s@%s done", manifest.name, manifest.revision)

    async def _worker(self, manifest: Manifest, receive: trio.MemoryReceiveChannel) -> None:
        assert self._fetch is not None and self._is_cached is not None
        async with receive:
            async for entry, index in receive:
                if self._is_cached(manifest, entry, index):
                    continue
                try:
                    await self._fetch(manifest, entry, index)
                    self.done_blocks += 1
                except MxfsError as exc:  # the reader will fetch it (and report) if it needs it
                    log.debug("swarm fill: block %d of %s: %s", index, entry.path, exc)
