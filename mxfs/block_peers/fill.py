"""Swarm fill: a node in a cold swarm hydrates the whole model, in two lanes.

Measured on the emulated fleet (tests/support/fleet.py, docs/peers.md):

* When every node reads a model front to back, all of them want the same block at the same
  moment, so its owner uploads it N-1 times while the other uplinks idle (8 nodes: 2.5x one
  node). So a node that joins a model's swarm also fetches every block in the background.
* Fetching in plain order (even rotated per node) still asked owners for blocks they had not
  fetched yet: every request queued behind the server's saturated link while blocks other
  peers already held went unasked (8 nodes: 2x one node with the CPU mostly idle).

So the fill runs two lanes. The *server lane* fetches the blocks this node owns (the swarm's
rendezvous owner, the same on every node), in order, so the server's link carries each block
once and stays busy from the first second. The *peer lane* fetches the other blocks, in an
order rotated by this node's rank (node k of N starts k/N of the way in), taking first the
ones some peer already holds (the server lane keeps about ``SERVER_REQUESTS`` in flight
fleet-wide); a block nobody holds yet waits for its owner, at most
``WAIT_FOR_OWNER_S``, then goes through the chain anyway (owner pull-through, or the server).
Fetches go through the chain: they share the reader's single-flight, verification and cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from mxfs.block_peers.registry import PeerNode
from mxfs.block_peers.swarm import owner
from mxfs.errors import MxfsError
from mxfs.manifest.model import FileEntry, Manifest

log = logging.getLogger(__name__)

SERVER_REQUESTS = 8  # owned blocks in flight from the server, fleet-wide (split over members)
PEER_LANE = 3       # other blocks in flight from peers
WINDOW = 32         # pending blocks the peer lane looks at for one already held
WAIT_FOR_OWNER_S = 5.0
POLL_S = 0.25
MAX_FILLS = 64

Block = tuple[FileEntry, int]
#: fetch one block through the chain (cache, peers, server) and cache it
FetchBlock = Callable[[Manifest, FileEntry, int], Awaitable[object]]
#: whether a block is already in the local cache
IsCached = Callable[[Manifest, FileEntry, int], bool]
#: whether some usable peer holds a block now (per the registry view)
PeerHolds = Callable[[Manifest, FileEntry, int], Awaitable[bool]]


def fill_order(manifest: Manifest, me: str, members: Sequence[PeerNode]) -> list[Block]:
    """Every block of ``manifest``, rotated to start at ``me``'s share of the swarm."""
    blocks = [(e, i) for e in manifest.files for i in range(e.block_count(manifest.block_size))]
    ids = sorted({m.node_id for m in members} | {me})
    start = len(blocks) * ids.index(me) // len(ids)
    return blocks[start:] + blocks[:start]


def split_owned(manifest: Manifest, me: PeerNode, members: Sequence[PeerNode],
                order: list[Block]) -> tuple[list[Block], list[Block]]:
    """(blocks ``me`` owns, in model order; the others, in ``order``)."""
    everyone = {m.node_id: m for m in members}
    everyone[me.node_id] = me
    nodes = list(everyone.values())
    mine, others = [], []
    for e, i in order:
        own = owner(e.key(i, manifest.block_size), nodes)
        (mine if own is not None and own.node_id == me.node_id else others).append((e, i))
    mine.sort(key=lambda b: (b[0].path, b[1]))
    return mine, others


class _Peerlane:
    """Pending non-owned blocks; workers take the first one a peer holds, or one that waited long."""

    def __init__(self, blocks: list[Block]) -> None:
        self.pending = blocks
        self.since = time.monotonic()
        self.lock = trio.Lock()


class SwarmFill:
    """Starts one background fill per model this node cold-reads in a swarm."""

    def __init__(self, me: PeerNode, peer_lane: int = PEER_LANE) -> None:
        self.me = me
        self.peer_lane = peer_lane
        self._nursery: trio.Nursery | None = None
        self._fetch: FetchBlock | None = None
        self._is_cached: IsCached | None = None
        self._peer_holds: PeerHolds | None = None
        self._started: set[tuple[str, str]] = set()
        self.done_blocks = 0

    def start(self, nursery: trio.Nursery, fetch: FetchBlock, is_cached: IsCached, peer_holds: PeerHolds) -> None:
        self._nursery, self._fetch, self._is_cached, self._peer_holds = nursery, fetch, is_cached, peer_holds

    def request(self, manifest: Manifest, members: Sequence[PeerNode]) -> None:
        """Fill ``manifest`` in the background (once per model while this daemon runs)."""
        ref = (manifest.name, manifest.revision)
        if self._nursery is None or ref in self._started or len(self._started) >= MAX_FILLS:
            return
        self._started.add(ref)
        mine, others = split_owned(manifest, self.me, members, fill_order(manifest, self.me.node_id, members))
        log.info("swarm fill of %s@%s: %d blocks owned (from the server), %d from %d peers",
                 manifest.name, manifest.revision, len(mine), len(others), len(members))
        # the server's link is shared by every owner: a few requests in flight each keep it busy
        # without queueing any one past the fetch timeout
        server_lane = max(1, min(4, SERVER_REQUESTS // (len(members) or 1)))
        self._nursery.start_soon(self._run, manifest, mine, others, server_lane)

    async def _run(self, manifest: Manifest, mine: list[Block], others: list[Block], server_lane: int) -> None:
        owned = iter(mine)
        lane = _Peerlane(others)
        async with trio.open_nursery() as nursery:
            for _ in range(server_lane):
                nursery.start_soon(self._server_worker, manifest, owned, lane)
            for _ in range(self.peer_lane):
                nursery.start_soon(self._peer_worker, manifest, lane)
        log.info("swarm fill of %s@%s done", manifest.name, manifest.revision)

    async def _get(self, manifest: Manifest, entry: FileEntry, index: int) -> None:
        assert self._fetch is not None and self._is_cached is not None
        if self._is_cached(manifest, entry, index):
            return
        try:
            await self._fetch(manifest, entry, index)
            self.done_blocks += 1
        except MxfsError as exc:  # the reader will fetch it (and report) if it needs it
            log.debug("swarm fill: block %d of %s: %s", index, entry.path, exc)

    async def _server_worker(self, manifest: Manifest, owned, lane: _Peerlane) -> None:
        for entry, index in owned:  # a shared iterator: each owned block goes to one worker
            await self._get(manifest, entry, index)
        await self._peer_worker(manifest, lane)  # then help with the rest

    async def _peer_worker(self, manifest: Manifest, lane: _Peerlane) -> None:
        while True:
            async with lane.lock:
                picked = await self._pick(manifest, lane)
            if picked is None:
                if not lane.pending:
                    return
                await trio.sleep(POLL_S)
                continue
            await self._get(manifest, *picked)

    async def _pick(self, manifest: Manifest, lane: _Peerlane) -> Block | None:
        """The first pending block a peer holds (within ``WINDOW``), else one that waited enough."""
        assert self._peer_holds is not None and self._is_cached is not None
        for n, (entry, index) in enumerate(lane.pending[:WINDOW]):
            if self._is_cached(manifest, entry, index) or await self._peer_holds(manifest, entry, index):
                lane.since = time.monotonic()
                return lane.pending.pop(n)
        if lane.pending and time.monotonic() - lane.since > WAIT_FOR_OWNER_S:
            lane.since = time.monotonic()
            return lane.pending.pop(0)
        return None
