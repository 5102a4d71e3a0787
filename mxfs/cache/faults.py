"""Failures of the local cache's disk and index: named, counted, logged; never fatal.

A full disk (ENOSPC), a full lmdb map, or a cache file that cannot be read turn the
cache into a miss or a skipped write: reads go on uncached. Each failure is counted in
``mxfs_node_cache_errors_total{op, reason}``; ``mxfs_node_cache_degraded{reason}`` is 1
while the latest cache write failed for that reason (0 again after a write succeeds).
Logs say why at most once per ``LOG_EVERY_S`` per (op, reason).
"""

from __future__ import annotations

import errno
import logging
import threading
import time

import lmdb
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


def reason_of(exc: BaseException) -> str:
    """A short, stable label for a cache failure: an errno name, ``map_full`` or an lmdb error."""
    if isinstance(exc, lmdb.MapFullError):
        return "map_full"
    if isinstance(exc, lmdb.DiskError):
        return "ENOSPC"
    if isinstance(exc, lmdb.Error):
        return "index_" + type(exc).__name__.removesuffix("Error").lower()
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


#: what a cache operation may raise when the disk or the index fails (never a bug)
CACHE_FAILURES = (OSError, lmdb.Error)


class CacheFaults:
    """Counts, gauges and rate-limited logs for failed cache operations (thread-safe)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.errors = Counter("mxfs_node_cache_errors", "cache operations that failed (reads went on uncached)",
                              ["op", "reason"], registry=r)
        self.degraded = Gauge("mxfs_node_cache_degraded", "1 while cache writes fail for this reason",
                              ["reason"], registry=r)
        self._lock = threading.Lock()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # -> (last log time, suppressed)
        self._degraded: set[str] = set()

    def report(self, op: str, exc: BaseException, what: object = "") -> str:
        """Record that ``op`` (read, write, index, evict, flush, manifest) failed with ``exc``."""
        reason = reason_of(exc)
        self.errors.labels(op, reason).inc()
        now = time.monotonic()
        with self._lock:
            if op == "write" and reason not in self._degraded:
                self._degraded.add(reason)
                self.degraded.labels(reason).set(1)
            last, suppressed = self._logged.get((op, reason), (-LOG_EVERY_S, 0))
            if now - last < LOG_EVERY_S:
                self._logged[(op, reason)] = (last, suppressed + 1)
                return reason
            self._logged[(op, reason)] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("cache %s failed (%s) %s: %s; serving uncached%s", op, reason, what, exc, more)
        return reason

    def write_ok(self) -> None:
        """A cache write succeeded: the cache is no longer degraded."""
        if not self._degraded:
            return
        with self._lock:
            cleared, self._degraded = self._degraded, set()
        for reason in cleared:
            self.degraded.labels(reason).set(0)
        if cleared:
            log.info("cache writes work again (were failing: %s)", ", ".join(sorted(cleared)))
