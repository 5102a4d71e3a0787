"""Per-tier accounting of the fetch chain (Prometheus + a plain snapshot for status)."""

from __future__ import annotations

import threading
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class FetchStats:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.bytes = Counter("mxfs_node_tier_bytes", "block bytes obtained per tier", ["tier"], registry=r)
        self.blocks = Counter("mxfs_node_tier_blocks", "blocks obtained per tier", ["tier"], registry=r)
        self.latency = Histogram("mxfs_node_tier_seconds", "block fetch latency per tier", ["tier"], registry=r)
        self.failures = Counter("mxfs_node_tier_failures", "failed block fetches", ["tier", "reason"], registry=r)
        self.corrupt = Counter("mxfs_node_corrupt_blocks", "blocks that failed their hash", ["tier"], registry=r)
        self.read_bytes = Counter("mxfs_node_read_bytes", "bytes returned to readers", registry=r)
        self.hedges = Counter("mxfs_node_tier_hedges", "fetches hedged to the next tier", ["tier"], registry=r)
        self.cache_used = Gauge("mxfs_node_cache_bytes", "bytes in the local block cache", registry=r)
        self.background_failures = Counter("mxfs_node_background_failures",
                                           "best-effort background tasks that failed", ["task"], registry=r)
        self._lock = threading.Lock()
        self._bytes: dict[str, int] = defaultdict(int)
        self._blocks: dict[str, int] = defaultdict(int)
        self._corrupt: dict[str, int] = defaultdict(int)

    def got(self, tier: str, nbytes: int, seconds: float) -> None:
        self.bytes.labels(tier).inc(nbytes)
        self.blocks.labels(tier).inc()
        self.latency.labels(tier).observe(seconds)
        with self._lock:
            self._bytes[tier] += nbytes
            self._blocks[tier] += 1

    def failed(self, tier: str, reason: str) -> None:
        self.failures.labels(tier, reason).inc()

    def background_failed(self, task: str) -> None:
        self.background_failures.labels(task).inc()

    def hedged(self, tier: str) -> None:
        self.hedges.labels(tier).inc()

    def bad_hash(self, tier: str) -> None:
        self.corrupt.labels(tier).inc()
        with self._lock:
            self._corrupt[tier] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"bytes": dict(self._bytes), "blocks": dict(self._blocks), "corrupt": dict(self._corrupt)}
