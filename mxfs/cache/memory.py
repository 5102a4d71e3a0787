"""A small in-memory LRU of recently verified blocks, so many small reads of one block
cost one disk read and one hash check."""

from __future__ import annotations

import threading
from collections import OrderedDict

from mxfs.manifest.model import BlockKey


class HotBlocks:
    """Bounded by bytes; thread-safe; values are treated as immutable."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._used = 0
        self._items: OrderedDict[BlockKey, bytes | bytearray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: BlockKey) -> bytes | bytearray | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: BlockKey, data: bytes | bytearray) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)
            self._items[key] = data
            self._used += len(data)
            while self._used > self.capacity:
                _, dropped = self._items.popitem(last=False)
                self._used -= len(dropped)

    def discard(self, key: BlockKey) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0
