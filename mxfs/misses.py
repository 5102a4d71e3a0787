"""A bounded, expiring memory of names that were not found (negative lookups).

Node and server both ask slow, remote places (the server, the Hub, object stores) whether a
model exists. A name that does not is remembered for ``ttl_s`` so asking again costs
nothing; at most ``max_entries`` names are kept (the oldest are forgotten first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_TTL_S = 30.0
DEFAULT_MAX_ENTRIES = 10_000


class RecentMisses(Generic[K]):
    """``key -> why it was not found`` for ``ttl_s`` seconds; thread-safe."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, tuple[float, str]] = OrderedDict()

    def get(self, key: K) -> str | None:
        """Why ``key`` was not found, while that answer is fresh; else None."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            expires, reason = hit
            if self._clock() >= expires:
                del self._entries[key]
                return None
            return reason

    def add(self, key: K, reason: str) -> None:
        if self.ttl_s <= 0 or self.max_entries <= 0:
            return
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (self._clock() + self.ttl_s, reason)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
