"""Best-effort background work (cache writes, readahead, housekeeping) that cannot take the
daemon down: a task's failure is logged with its traceback and counted, and the nursery's
other tasks (the FUSE loop among them) go on."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mxfs.fetch.stats import FetchStats

log = logging.getLogger(__name__)


async def guarded(stats: FetchStats, task: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``fn(*args)``; an exception is counted in ``mxfs_node_background_failures{task}``
    and logged, never raised (cancellation still propagates)."""
    try:
        await fn(*args)
    except Exception:  # a supervisor boundary: every failure of a best-effort task stops here
        stats.background_failed(task)
        log.exception("background %s failed; the daemon keeps serving", task)
