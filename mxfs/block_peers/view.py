"""A short-lived local copy of the registry's answer for one file: who holds which blocks.

One lookup per file per ``max_age_s`` however many blocks are read, shared by
concurrent readers; a failed lookup is remembered briefly so a dead registry costs
one timeout, not one per block.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from mxfs.block_peers.registry import Holder, HolderRegistryClient, PeerNode
from mxfs.errors import BlockUnavailable
from mxfs.fetch.threads import in_thread

log = logging.getLogger(__name__)

MAX_ENTRIES = 4096
FAILURE_BACKOFF_S = 2.0


@dataclass(frozen=True)
class Snapshot:
    holders: tuple[Holder, ...]
    swarm: tuple[PeerNode, ...]
    at: float


EMPTY = Snapshot((), (), 0.0)


class HolderView:
    def __init__(self, registry: HolderRegistryClient, limiter: trio.CapacityLimiter, max_age_s: float = 0.5) -> None:
        self.registry = registry
        self.limiter = limiter
        self.max_age_s = max_age_s
        self._snaps: dict[tuple[str, int, str], Snapshot] = {}
        self._locks: dict[tuple[str, int, str], trio.Lock] = {}

    def invalidate(self, swarm: str) -> None:
        """Forget answers that carry ``swarm``'s membership (it just changed)."""
        for key in [k for k in self._snaps if k[2] == swarm]:
            del self._snaps[key]

    async def get(self, sha256: str, block_size: int, swarm: str) -> Snapshot:
        key = (sha256, block_size, swarm)
        snap = self._snaps.get(key)
        if snap is not None and time.monotonic() - snap.at < self.max_age_s:
            return snap
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            snap = self._snaps.get(key)
            if snap is not None and time.monotonic() - snap.at < self.max_age_s:
                return snap
            try:
                holders, members = await in_thread(self.registry.holders, sha256, block_size, swarm,
                                                   limiter=self.limiter, abandon=True)
                snap = Snapshot(tuple(holders), tuple(members), time.monotonic())
            except BlockUnavailable as exc:
                log.debug("holder lookup failed: %s", exc)
                stale = self._snaps.get(key, EMPTY)
                # keep what we knew, retry after a short back-off
                snap = Snapshot(stale.holders, stale.swarm,
                                time.monotonic() - self.max_age_s + FAILURE_BACKOFF_S)
            if len(self._snaps) >= MAX_ENTRIES:
                self._snaps.clear()
                self._locks = {key: lock}
            self._snaps[key] = snap
            return snap
