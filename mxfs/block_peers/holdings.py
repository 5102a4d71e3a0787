"""What this node holds, and the background task that tells the registry in batches.

The cache reports every added/removed block to ``Holdings`` (from any thread); the
announcer wakes every ``interval`` and sends only the files whose holdings changed,
as compressed bitmaps, plus a heartbeat well inside the registry's TTL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable

import trio

from mxfs.block_peers.bitmap import BlockSet
from mxfs.block_peers.registry import FileHoldings, HolderRegistryClient, PeerNode
from mxfs.errors import BlockUnavailable
from mxfs.fetch.threads import in_thread
from mxfs.manifest.model import BlockKey

log = logging.getLogger(__name__)

FileId = tuple[str, int]  # (file sha256, block size)
BATCH_FILES = 1024
#: everything held is re-sent this often (the registry's file records expire after a day)
REANNOUNCE_ALL_S = 6 * 3600.0


class Holdings:
    """Thread-safe map file -> held block indices, with the set of files changed since last taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[FileId, set[int]] = defaultdict(set)
        self._dirty: set[FileId] = set()

    def changed(self, added: Iterable[BlockKey], removed: Iterable[BlockKey]) -> None:
        """Cache listener: blocks were stored / evicted or discarded."""
        with self._lock:
            for key in added:
                fid = (key.sha256, key.block_size)
                self._held[fid].add(key.index)
                self._dirty.add(fid)
            for key in removed:
                fid = (key.sha256, key.block_size)
                self._held[fid].discard(key.index)
                self._dirty.add(fid)

    def take_dirty(self, limit: int = BATCH_FILES) -> list[FileHoldings]:
        """Up to ``limit`` changed files with their current holdings (cleared from the dirty set)."""
        out: list[FileHoldings] = []
        with self._lock:
            while self._dirty and len(out) < limit:
                fid = self._dirty.pop()
                held = self._held.get(fid, set())
                out.append(FileHoldings(fid[0], fid[1], BlockSet.of(held)))
                if not held:
                    self._held.pop(fid, None)
        return out

    def mark_all_dirty(self) -> None:
        """Send every held file again with the next announce."""
        with self._lock:
            self._dirty.update(self._held)

    def restore(self, files: list[FileHoldings]) -> None:
        """Mark files dirty again after a failed announce."""
        with self._lock:
            self._dirty.update((f.sha256, f.block_size) for f in files)

    def pending(self) -> bool:
        with self._lock:
            return bool(self._dirty)

    def files(self) -> int:
        with self._lock:
            return len(self._held)


class Announcer:
    """Batched announces, heartbeats, swarm membership and a final withdraw."""

    def __init__(self, registry: HolderRegistryClient, node: PeerNode, holdings: Holdings,
                 limiter: trio.CapacityLimiter, interval_s: float = 0.25, swarm_idle_s: float = 30.0) -> None:
        self.registry = registry
        self.node = node
        self.holdings = holdings
        self.limiter = limiter
        self.interval_s = interval_s
        self.swarm_idle_s = swarm_idle_s
        self.ttl_s = 30.0
        self.connected = False
        self._warned = False
        self._last_ok = 0.0
        self._last_full = time.monotonic()  # the first announce sends everything anyway
        self._swarms: dict[str, float] = {}     # swarm -> last activity (monotonic)
        self._announced: set[str] = set()       # swarms the registry knows we are in
        self._joined: dict[str, trio.Event] = {}
        self._wake = trio.Event()

    # -- swarm membership ---------------------------------------------------------------

    def touch_swarm(self, swarm: str) -> trio.Event:
        """Mark ``swarm`` active now; the returned event is set once the registry knows it."""
        self._swarms[swarm] = time.monotonic()
        event = self._joined.get(swarm)
        if event is None:
            event = self._joined[swarm] = trio.Event()
            self._wake.set()
        return event

    def _swarm_changes(self) -> tuple[list[str], list[str]]:
        now = time.monotonic()
        idle = [s for s, t in self._swarms.items() if now - t > self.swarm_idle_s]
        for s in idle:
            del self._swarms[s]
            self._joined.pop(s, None)
        live = sorted(self._swarms)
        return live, sorted(self._announced - set(live))

    # -- the loop -------------------------------------------------------------------------

    async def announce_once(self) -> bool:
        """One announce (all pending batches); False when the registry could not be reached."""
        swarms, left = self._swarm_changes()
        now = time.monotonic()
        # away longer than the TTL: the registry may have reaped us, so tell it everything again
        if self._last_ok and (now - self._last_ok > self.ttl_s or now - self._last_full > REANNOUNCE_ALL_S):
            self.holdings.mark_all_dirty()
            self._last_full = now
        heartbeat_due = time.monotonic() - self._last_ok > self.ttl_s / 3
        joining = [s for s in swarms if not self._joined[s].is_set()]
        first = True
        while first or self.holdings.pending():
            files = self.holdings.take_dirty()
            if not (files or heartbeat_due or joining or left or set(swarms) != self._announced):
                return True
            try:
                self.ttl_s = await in_thread(self.registry.announce, self.node, files, swarms, left,
                                             limiter=self.limiter)
            except BlockUnavailable as exc:
                self.holdings.restore(files)
                if self.connected or not self._warned:  # once per outage, not every interval
                    log.warning("cannot announce to the holder registry: %s", exc)
                    self._warned = True
                self.connected = False
                return False
            if not self.connected:
                log.info("announcing to the holder registry as %s (%s)", self.node.node_id, self.node.address)
            self.connected, self._warned = True, False
            self._last_ok = time.monotonic()
            self._announced = set(swarms)
            for s in swarms:
                self._joined[s].set()
            first, heartbeat_due, joining, left = False, False, [], []
        return True

    async def run(self) -> None:
        """Until cancelled: announce changes every ``interval_s``, or at once on a swarm join."""
        while True:
            with trio.move_on_after(self.interval_s):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.announce_once()

    def withdraw(self) -> None:
        """Blocking: remove this node from the registry (clean shutdown)."""
        try:
            self.registry.withdraw(self.node.node_id)
            log.info("withdrew %s from the holder registry", self.node.node_id)
        except BlockUnavailable as exc:
            log.warning("withdraw failed (the registry's TTL will expire us): %s", exc)
