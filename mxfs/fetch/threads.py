"""The one bridge from trio to blocking code: worker threads with limiters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


async def in_thread(
    fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None,
    abandon: bool = False,
) -> T:
    """Run ``fn(*args)`` in a worker thread; ``abandon`` lets a cancel return at once."""
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter, abandon_on_cancel=abandon)
