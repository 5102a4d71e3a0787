"""Swarm fill: a node in a cold swarm hydrates the whole model, in two lanes.

Measured on the emulated fleet (tests/support/fleet.py, docs/peers.md):

* When every node reads a model front to back, all of them want the same block at the same
  moment, so its owner uploads it N-1 times while the other uplinks idle (8 nodes: 2.5x one
  node). So a node that joins a model's swarm also fetches every block in the background.
* Fetching in plain order (even rotated per node) still asked owners for blocks they had not
  fetched yet: every request queued behind the server's saturated link while blocks other
  peers already held went unasked (8 nodes: 2x one node with the CPU mostly idle).
* A peer lane that walked an order rotated by the node's rank looked only at blocks far ahead
  of what the server had sent so far: it found nothing held, waited, and the node's downlink
  ran at ~65 % while the server's link was full (link counters sampled every 0.5 s).

So the fill runs two lanes over the model in one order (the manifest's). The *server lane*
fetches the blocks this node owns (the swarm's rendezvous owner, the same on every node), in
that order, so the server's link carries each block once and stays busy from the first
second; all owners move through the model at about the same pace, so how far this node's
own server lane has got (the *frontier*) says which blocks every owner has started by now.
The *peer lane* fetches the other blocks. It looks at the first ``WINDOW`` pending ones and
takes the rarest that some peer holds per the registry view (fewest holders: newly fetched
blocks spread first, from whoever has them; ties broken by a per-node hash so nodes pick
different blocks); when none is announced yet it pulls the first one behind the frontier
from its owner (the owner has it or is fetching it: the request joins that fetch, without
waiting for holdings to reach the registry); a block ahead of the frontier waits at most
``WAIT_FOR_OWNER_S``. Fetches go through the chain: they share the reader's single-flight,
verification and cache.
"""

from __future__ import annotations

import bisect
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from mxfs.block_peers.registry import PeerNode
from mxfs.block_peers.swarm import owner
from mxfs.errors import MxfsError
from mxfs.manifest.model import FileEntry, Manifest

log = logging.getLogger(__name__)

SERVER_REQUESTS = 16  # owned blocks in flight from the server, fleet-wide (split by share)
PEER_LANE = 8       # other blocks in flight from peers
WINDOW = 32         # pending blocks (in model order) the peer lane looks at
WAIT_FOR_OWNER_S = 5.0
POLL_S = 0.25
MAX_FILLS = 64

Block = tuple[FileEntry, int]
#: a block and its position in the model's order
Placed = tuple[int, FileEntry, int]
#: fetch one block through the chain (cache, peers, server) and cache it
FetchBlock = Callable[[Manifest, FileEntry, int], Awaitable[object]]
#: whether a block is already in the local cache
IsCached = Callable[[Manifest, FileEntry, int], bool]
#: how many usable peers hold a block now (per the registry view)
PeerCount = Callable[[Manifest, FileEntry, int], Awaitable[int]]
#: the swarm's members as last listed by the registry (usable ones; may lack this node)
Members = Callable[[Manifest], Sequence[PeerNode]]


def model_order(manifest: Manifest) -> list[Placed]:
    """Every block of ``manifest`` with its position, in the manifest's file order."""
    blocks = [(e, i) for e in manifest.files for i in range(e.block_count(manifest.block_size))]
    return [(pos, e, i) for pos, (e, i) in enumerate(blocks)]


def split_owned(manifest: Manifest, me: PeerNode, members: Sequence[PeerNode]) -> tuple[list[Placed], list[Placed]]:
    """(blocks ``me`` owns, the others), both in model order."""
    everyone = {m.node_id: m for m in members}
    everyone[me.node_id] = me
    nodes = list(everyone.values())
    mine, others = [], []
    for pos, e, i in model_order(manifest):
        own = owner(e.key(i, manifest.block_size), nodes)
        (mine if own is not None and own.node_id == me.node_id else others).append((pos, e, i))
    return mine, others


def server_lane_width(owned: int, total: int) -> int:
    """Requests this node keeps in flight to the server: ``SERVER_REQUESTS`` fleet-wide, split by share.

    The server's link is shared by every owner (per connection, about equally): a few requests
    in flight each keep it busy without queueing any one past the fetch timeout. An owner's
    share of requests follows its share of the blocks (rendezvous hashing gives 130 blocks over
    16 nodes anywhere from 3 to 14 each), so all owners move through the model at the same
    pace and the heaviest one does not hold the last blocks back alone.
    """
    if not owned:
        return 1
    return max(1, min(4, round(SERVER_REQUESTS * owned / max(1, total))))


def tie_break(me: str, pos: int) -> int:
    """A per-node order among equally rare blocks, so nodes spread over them."""
    return zlib.crc32(f"{me}:{pos}".encode())


def choose(me: str, window: Sequence[tuple[int, int]], frontier: int, waited_s: float) -> int | None:
    """Index into ``window`` [(position, usable holders)] of the block to fetch next, or None to wait.

    The rarest held block first; else the first one its owner has started (position at or
    behind ``frontier``); else, after ``WAIT_FOR_OWNER_S``, the first one.
    """
    held = [(count, tie_break(me, pos), n) for n, (pos, count) in enumerate(window) if count > 0]
    if held:
        return min(held)[2]
    if window and (window[0][0] <= frontier or waited_s > WAIT_FOR_OWNER_S):
        return 0
    return None


@dataclass
class _Lanes:
    """Shared state of one model's fill: the owned blocks and the pending others."""

    owned: dict[int, Placed]   # owned blocks not started yet, by position (insertion = model order)
    pending: list[Placed]
    slots: trio.CapacityLimiter  # this node's requests to the server for owned blocks
    frontier: int = -1   # model position of the last owned block the server lane started
    since: float = field(default_factory=time.monotonic)
    idle_until: float = 0.0  # no block to take was found: workers wait until then
    lock: trio.Lock = field(default_factory=trio.Lock)


class SwarmFill:
    """Starts one background fill per model this node cold-reads in a swarm."""

    def __init__(self, me: PeerNode, peer_lane: int = PEER_LANE) -> None:
        self.me = me
        self.peer_lane = peer_lane
        self._nursery: trio.Nursery | None = None
        self._fetch: FetchBlock | None = None
        self._is_cached: IsCached | None = None
        self._peer_count: PeerCount | None = None
        self._members: Members | None = None
        self._started: set[tuple[str, str]] = set()
        self.done_blocks = 0

    def start(self, nursery: trio.Nursery, fetch: FetchBlock, is_cached: IsCached, peer_count: PeerCount,
              members: Members | None = None) -> None:
        self._nursery, self._fetch, self._is_cached, self._peer_count = nursery, fetch, is_cached, peer_count
        self._members = members

    def request(self, manifest: Manifest, members: Sequence[PeerNode]) -> None:
        """Fill ``manifest`` in the background (once per model while this daemon runs)."""
        ref = (manifest.name, manifest.revision)
        if self._nursery is None or ref in self._started or len(self._started) >= MAX_FILLS:
            return
        self._started.add(ref)
        mine, others = split_owned(manifest, self.me, members)
        log.info("swarm fill of %s@%s: %d blocks owned (from the server), %d from %d peers",
                 manifest.name, manifest.revision, len(mine), len(others), len(members))
        server_lane = server_lane_width(len(mine), len(mine) + len(others))
        lanes = _Lanes({b[0]: b for b in mine}, others, trio.CapacityLimiter(server_lane))
        self._nursery.start_soon(self._run, manifest, lanes, server_lane)

    async def _run(self, manifest: Manifest, lanes: _Lanes, server_lane: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(server_lane):
                nursery.start_soon(self._server_worker, manifest, lanes)
            for _ in range(self.peer_lane):
                nursery.start_soon(self._peer_worker, manifest, lanes)
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

    async def _server_worker(self, manifest: Manifest, lanes: _Lanes) -> None:
        while lanes.owned:
            async with lanes.slots:
                if not lanes.owned:  # another worker took the last one
                    break
                pos, entry, index = lanes.owned.pop(next(iter(lanes.owned)))  # the first in model order
                if not self._still_mine(manifest, entry, index):  # the swarm grew since the split
                    bisect.insort(lanes.pending, (pos, entry, index), key=lambda b: b[0])
                    continue
                lanes.frontier = max(lanes.frontier, pos)
                await self._get(manifest, entry, index)
        lanes.frontier = 1 << 62  # every owner is about done: pull whatever nobody announced yet
        await self._peer_worker(manifest, lanes)  # then help with the rest

    def _still_mine(self, manifest: Manifest, entry: FileEntry, index: int) -> bool:
        """Whether this node still owns a block with the swarm as the registry lists it now.

        The split is made at the first cold read, when members that joined a moment later may
        not be listed yet; each of them owns some of "our" blocks by now and fetches them from
        the server itself (measured: 1.3 copies of egress at 8 nodes before this check).
        """
        if self._members is None:
            return True
        members = list(self._members(manifest))
        if not members:
            return True
        own = owner(entry.key(index, manifest.block_size), [*members, self.me])
        return own is None or own.node_id == self.me.node_id

    async def _peer_worker(self, manifest: Manifest, lanes: _Lanes) -> None:
        while True:
            async with lanes.lock:
                picked = await self._pick(manifest, lanes)
            if picked is None:
                if not lanes.pending:
                    return
                await trio.sleep(POLL_S)
                continue
            await self._get(manifest, *picked)

    async def _pick(self, manifest: Manifest, lanes: _Lanes) -> Block | None:
        assert self._peer_count is not None and self._is_cached is not None
        if time.monotonic() < lanes.idle_until:  # another worker just found nothing: no rescan
            return None
        # blocks the reader (or a hedge) already brought in leave the list without a fetch
        lanes.pending = [b for b in lanes.pending[:WINDOW] if not self._is_cached(manifest, b[1], b[2])] \
            + lanes.pending[WINDOW:]
        window = lanes.pending[:WINDOW]
        counts = [(pos, await self._peer_count(manifest, entry, index)) for pos, entry, index in window]
        n = choose(self.me.node_id, counts, lanes.frontier, time.monotonic() - lanes.since)
        if n is None:
            lanes.idle_until = time.monotonic() + POLL_S
            return None
        lanes.since = time.monotonic()
        _, entry, index = lanes.pending.pop(n)
        return entry, index
