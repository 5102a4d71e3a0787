"""Tier: blocks from other node daemons (the peer cache).

For each block: ask the registry view who holds it, try those holders in a per-requester
hash order (least loaded of the best two first); in swarm mode, when nobody holds it
yet, ask the block's swarm owner to fetch it from the server and pass it on (or fetch it
ourselves when we are the owner, by letting the chain fall through to the server).

This tier verifies every block itself so that it knows exactly which peer lied: such a
peer is quarantined (skipped) for ``quarantine_s``, and the next holder is tried. A peer
that fails or times out is avoided for a few seconds. The chain hedges a slow peer
fetch to the next tier after ``hedge_after()`` seconds.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict

import trio

from mxfs.block_peers.client import PeerBusy, PeerClients, PeerMiss, PullThrough
from mxfs.block_peers.fill import SwarmFill
from mxfs.block_peers.holdings import Announcer
from mxfs.block_peers.registry import PeerNode
from mxfs.block_peers.swarm import owner, rank_holders, swarm_id
from mxfs.block_peers.view import HolderView, Snapshot
from mxfs.errors import BlockUnavailable, SourceError
from mxfs.fetch.stats import FetchStats
from mxfs.fetch.threads import in_thread
from mxfs.manifest.hashing import block_ok
from mxfs.manifest.model import BlockKey, FileEntry, Manifest

log = logging.getLogger(__name__)

_CONTENT_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_HOLDERS_TRIED = 3
JOIN_WAIT_S = 2.0
FAILED_PEER_AVOID_S = 5.0
BUSY_PEER_AVOID_S = 0.25
SLOW_PEER_AVOID_S = 10.0


class PeerTier:
    name = "peer"
    #: the chain does not hash blocks from this tier again
    verifies = True
    #: pull-through requests from other peers skip this tier (no fetch loops)
    is_peer = True

    def __init__(
        self, me: PeerNode, clients: PeerClients, view: HolderView, announcer: Announcer,
        limiter: trio.CapacityLimiter, stats: FetchStats, *, timeout_s: float, hedge_min_s: float,
        swarm: bool = True, gather_s: float = 0.5, quarantine_s: float = 600.0,
        fill: SwarmFill | None = None,
    ) -> None:
        self.me = me
        self.clients = clients
        self.view = view
        self.announcer = announcer
        self.limiter = limiter
        self.stats = stats
        self.timeout_s = timeout_s
        self.read_timeout_s = min(timeout_s, 5.0)
        self.hedge_min_s = hedge_min_s
        self.swarm = swarm
        self.gather_s = gather_s
        self.quarantine_s = quarantine_s
        self.fill = fill
        self._inflight: dict[str, int] = defaultdict(int)
        self._avoid: dict[str, tuple[float, str]] = {}   # node id -> (until, reason)
        self._bytes_from: dict[str, int] = defaultdict(int)
        self._addresses: dict[str, str] = {}
        self._gates: dict[str, tuple[trio.Event, trio.Event]] = {}
        self._warmed: set[str] = set()
        self._swarms: dict[str, tuple[PeerNode, ...]] = {}  # swarm -> members as last listed
        self._ewma_s = 0.0

    # -- the Tier interface ------------------------------------------------------------------

    async def fetch(self, manifest: Manifest, entry: FileEntry, index: int) -> bytes | bytearray:
        bs = manifest.block_size
        if not _CONTENT_ID.match(entry.sha256):
            raise BlockUnavailable(f"{entry.path} has no content id peers can look up")
        key = entry.key(index, bs)
        _, length = entry.block_span(index, bs)
        expected = entry.block_hashes[index]
        sw = swarm_id(manifest.name, manifest.revision) if self.swarm else ""
        if sw:
            await self._join(sw)
        while True:  # the chain bounds the whole fetch (its timeout, and its hedge to the server)
            snap = await self.view.get(entry.sha256, bs, sw)
            if sw:
                self._swarms[sw] = snap.swarm
                self._warm(snap.swarm)
                if self.fill is not None:
                    self.fill.request(manifest, snap.swarm)
            errors: list[str] = []
            refused: list[bool] = []  # one per source asked (or skipped): whether it was busy
            data = await self._from_holders(manifest, entry, index, key, length, expected, snap, sw, errors, refused)
            if data is not None:
                return data
            # every source of the block is at its upload limit: wait for a slot rather than go to
            # the server (that would be one more copy of egress)
            if not (sw and refused and all(refused)):
                raise BlockUnavailable("; ".join(errors) or f"no peer holds {key}")
            await trio.sleep(BUSY_PEER_AVOID_S)

    async def _from_holders(self, manifest: Manifest, entry: FileEntry, index: int, key: BlockKey, length: int,
                            expected: bytes, snap: Snapshot, sw: str, errors: list[str],
                            refused: list[bool]) -> bytes | bytearray | None:
        """One round: the block's holders in rank order, then (swarm) its owner with pull-through.

        ``refused`` gets one entry per source asked or skipped: True when it was busy.
        """
        holding = [h.node for h in snap.holders if index in h.blocks and h.node.node_id != self.me.node_id]
        refused.extend(True for n in holding if self._busy(n.node_id))
        holders = [n for n in holding if self._usable(n.node_id)]
        asked: set[str] = set()
        for peer in rank_holders(key, self.me.node_id, holders, self._load)[:MAX_HOLDERS_TRIED]:
            asked.add(peer.node_id)
            data = await self._attempt(peer, key, length, manifest.block_hash, expected, None, errors, refused)
            if data is not None:
                return data
        if holding and all(refused):  # held elsewhere, every holder busy: wait for a slot, pull nothing
            return None
        if sw:
            # a busy owner stays the owner (asking another member would fetch the block from the
            # server again); one that failed, is slow or lied hands its blocks to the next member
            members = {m.node_id: m for m in snap.swarm if self._usable(m.node_id) or self._busy(m.node_id)}
            members[self.me.node_id] = self.me
            own = owner(key, list(members.values()))
            if own is not None and own.node_id == self.me.node_id:
                raise BlockUnavailable(f"swarm: {key} is this node's to fetch")
            if own is not None and own.node_id not in asked:
                if self._busy(own.node_id):
                    refused.append(True)
                    return None
                pull = PullThrough(manifest.name, manifest.revision, entry.path)
                return await self._attempt(own, key, length, manifest.block_hash, expected, pull, errors, refused)
        return None

    async def peer_count(self, manifest: Manifest, entry: FileEntry, index: int) -> int:
        """How many usable peers hold this block now, per the (shared, briefly cached) registry view."""
        if not _CONTENT_ID.match(entry.sha256):
            return 0
        sw = swarm_id(manifest.name, manifest.revision) if self.swarm else ""
        snap = await self.view.get(entry.sha256, manifest.block_size, sw)
        if sw:
            self._swarms[sw] = snap.swarm
        return sum(1 for h in snap.holders
                   if index in h.blocks and h.node.node_id != self.me.node_id and self._usable(h.node.node_id))

    def swarm_members(self, manifest: Manifest) -> list[PeerNode]:
        """The model's swarm as the registry last listed it, less members that failed, are slow or lied."""
        members = self._swarms.get(swarm_id(manifest.name, manifest.revision), ())
        return [m for m in members if self._usable(m.node_id) or self._busy(m.node_id)]

    def quarantine(self, manifest: Manifest, entry: FileEntry, index: int) -> None:
        """Unused: this tier verifies blocks itself and quarantines the exact peer."""

    def hedge_after(self) -> float:
        """Seconds before the chain also asks the next tier: a few times the usual peer latency.

        In a swarm the floor is 3/4 of the fetch timeout: there every link is busy by design and
        a slow answer is usually a block its owner is still fetching from the server, so an
        early hedge fetched the same block from the server again, which slowed the server's
        link and the next answers, which hedged more (measured on the emulated network: 3.5
        copies of egress at 16 nodes with a 1 s floor). A stalled peer still costs at most this
        long once: losing the race gets it avoided.
        """
        floor = self.timeout_s * 0.75 if self.swarm else self.timeout_s / 2 if not self._ewma_s else self.hedge_min_s
        return min(self.timeout_s, max(floor, 4 * self._ewma_s))

    # -- internals ---------------------------------------------------------------------------

    async def _join(self, sw: str) -> None:
        """Join ``sw`` in the registry; the first fetch waits a moment for the fleet to gather."""
        joined = self.announcer.touch_swarm(sw)
        if joined.is_set():
            return
        gate = self._gates.get(sw)
        if gate is not None and gate[0] is joined:
            await gate[1].wait()
            return
        gate = self._gates[sw] = (joined, trio.Event())
        try:
            with trio.move_on_after(JOIN_WAIT_S):
                await joined.wait()
            await trio.sleep(self.gather_s)
            self.view.invalidate(sw)
        finally:
            gate[1].set()

    def _usable(self, node_id: str) -> bool:
        hit = self._avoid.get(node_id)
        if hit is None:
            return True
        if hit[0] <= time.monotonic():
            del self._avoid[node_id]
            return True
        return False

    def _warm(self, members: tuple[PeerNode, ...]) -> None:
        """Connect to swarm members not dialled yet, before the swarm's traffic fills the links."""
        for m in members:
            if m.node_id != self.me.node_id and m.address not in self._warmed:
                self._warmed.add(m.address)
                self.clients.warm(m.address)

    def _busy(self, node_id: str) -> bool:
        """Whether ``node_id`` refused a request as busy moments ago (and is briefly avoided for it)."""
        hit = self._avoid.get(node_id)
        return hit is not None and hit[1] == "busy" and hit[0] > time.monotonic()

    def _load(self, node_id: str) -> int:
        return self._inflight.get(node_id, 0)

    def _avoid_for(self, node_id: str, seconds: float, reason: str) -> None:
        self._avoid[node_id] = (time.monotonic() + seconds, reason)

    async def _attempt(self, peer: PeerNode, key: BlockKey, length: int, algorithm: str, expected: bytes,
                       pull: PullThrough | None, errors: list[str], refused: list[bool]) -> bytes | bytearray | None:
        """One request to ``peer``; None on a failure (in ``errors``; ``refused`` says whether it was busy)."""
        refused.append(False)
        self._addresses[peer.node_id] = peer.address
        self._inflight[peer.node_id] += 1
        start = time.monotonic()
        try:
            data = await in_thread(
                self.clients.read_block, peer.address, key, length,
                self.timeout_s if pull else self.read_timeout_s, pull, limiter=self.limiter, abandon=True,
            )
        except PeerMiss as exc:
            self.stats.failed(self.name, "miss")
            errors.append(str(exc))
            return None
        except PeerBusy as exc:
            refused[-1] = True
            self.stats.failed(self.name, "busy")
            self._avoid_for(peer.node_id, BUSY_PEER_AVOID_S, "busy")
            errors.append(str(exc))
            return None
        except trio.Cancelled:  # the chain's hedge won: this peer was slower than the server
            if time.monotonic() - start >= self.hedge_after():
                self._avoid_for(peer.node_id, SLOW_PEER_AVOID_S, "slow")
            raise
        except (BlockUnavailable, SourceError) as exc:
            self.stats.failed(self.name, "error")
            self._avoid_for(peer.node_id, FAILED_PEER_AVOID_S, "unreachable")
            log.info("peer %s failed for %s (retrying elsewhere): %s", peer.node_id, key, exc)
            errors.append(str(exc))
            return None
        finally:
            self._inflight[peer.node_id] -= 1
        if not await in_thread(block_ok, algorithm, data, expected):
            self.stats.bad_hash(self.name)
            self._avoid_for(peer.node_id, self.quarantine_s, "quarantined: served a corrupt block")
            log.warning("peer %s (%s) served a corrupt block %s: quarantined for %gs",
                        peer.node_id, peer.address, key, self.quarantine_s)
            errors.append(f"peer {peer.node_id}: bad bytes")
            return None
        seconds = time.monotonic() - start
        self._ewma_s = seconds if not self._ewma_s else 0.8 * self._ewma_s + 0.2 * seconds
        self._bytes_from[peer.node_id] += length
        return data

    # -- status ------------------------------------------------------------------------------

    def peer_lines(self) -> list[str]:
        """One line per peer this node has talked to: bytes received, and why it is avoided."""
        now = time.monotonic()
        lines = []
        for node_id in sorted(set(self._bytes_from) | set(self._avoid)):
            line = f"{node_id} {self._addresses.get(node_id, '?')}: {self._bytes_from.get(node_id, 0)} bytes"
            avoid = self._avoid.get(node_id)
            if avoid is not None and avoid[0] > now:
                line += f", {avoid[1]} ({avoid[0] - now:.0f}s left)"
            lines.append(line)
        return lines

    def quarantined(self) -> list[str]:
        now = time.monotonic()
        return sorted(n for n, (until, why) in self._avoid.items() if until > now and why.startswith("quarantined"))
