"""The server's recently fetched origin blocks, in a bounded set of reused buffers.

A block read from an origin is received straight into one of these buffers, hashed there,
written to the block store from it and sent to nodes from it: no per-block Python copy,
and no fresh memory per block (the same page-aligned buffers go round, so a cold read
does not fault in a new 4 MiB of anonymous memory for every block, and ``O_DIRECT``
writes can use them as they are).

Every use holds a pin; a pinned buffer is never handed out again, so bytes being sent,
hashed or written cannot change under the reader. Unpinned blocks stay readable until
their buffer is needed for another block: first those already sent to a reader, then the
pool grows to its bound, then the least recently used. ``limit_bytes`` bounds the pooled
buffers; when every one is pinned a buffer outside the bound is lent, readable while
pinned and freed with its last pin (pins are bounded by the origin workers and the
connections being served).
"""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mxfs.manifest.model import BlockKey


@dataclass(eq=False)
class Slot:
    """One page-aligned buffer and the block it holds (``length`` bytes of it are valid)."""

    buffer: mmap.mmap
    length: int = 0
    pins: int = 0
    key: BlockKey | None = None  # set once the block is published (verified bytes)
    pooled: bool = True
    sent: bool = False  # handed to a reader in full at least once: the first to go when a buffer is needed

    @property
    def capacity(self) -> int:
        return len(self.buffer)

    def view(self, length: int | None = None) -> memoryview:
        """A view of the first ``length`` (default: the block's) bytes; valid while pinned."""
        return memoryview(self.buffer)[: self.length if length is None else length]


class BlockMemory:
    """Thread-safe: ``lend`` a slot, fill it, ``publish`` it; ``pinned`` reads a published block."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.pooled_bytes = 0  # bytes of all pooled buffers (published, free or lent)
        self.overflow = 0  # buffers lent outside the bound because every pooled one was pinned
        self._lock = threading.Lock()
        self._blocks: OrderedDict[BlockKey, Slot] = OrderedDict()  # published, LRU first
        self._free: list[Slot] = []

    @staticmethod
    def _capacity(length: int) -> int:
        return max(mmap.PAGESIZE, -(-length // mmap.PAGESIZE) * mmap.PAGESIZE)

    def lend(self, capacity: int) -> Slot:
        """A pinned, unpublished slot of at least ``capacity`` bytes (contents undefined)."""
        capacity = self._capacity(capacity)
        with self._lock:
            for i, slot in enumerate(self._free):
                if slot.capacity == capacity:
                    del self._free[i]
                    slot.pins, slot.length, slot.key = 1, 0, None
                    return slot
            # a block already sent gives its buffer before the pool grows (fresh memory costs page faults)
            done = next((s for s in self._blocks.values() if s.sent and s.pins == 0 and s.capacity == capacity), None)
            if done is not None:
                del self._blocks[done.key]
                done.key, done.pins, done.length = None, 1, 0
                return done
            while self.pooled_bytes + capacity > self.limit:
                if self._free:  # free buffers of another size make room first
                    self.pooled_bytes -= self._free.pop().capacity
                    continue
                victim = next((s for s in self._blocks.values() if s.pins == 0), None)
                if victim is None:
                    break
                del self._blocks[victim.key]
                victim.key = None
                if victim.capacity == capacity:
                    victim.pins, victim.length = 1, 0
                    return victim
                self.pooled_bytes -= victim.capacity
            pooled = self.pooled_bytes + capacity <= self.limit
            if pooled:
                self.pooled_bytes += capacity
            else:
                self.overflow += 1
        return Slot(mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), pins=1, pooled=pooled)

    def publish(self, key: BlockKey, slot: Slot, length: int) -> None:
        """``slot`` now holds the verified bytes of ``key`` (the caller keeps its pin)."""
        slot.length, slot.sent = length, False
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None and old is not slot:
                old.key = None
                self._recycle(old)
            slot.key = key
            self._blocks[key] = slot

    def release(self, slot: Slot) -> None:
        """Drop one pin of ``slot`` (a buffer lent outside the bound leaves with its last pin)."""
        with self._lock:
            slot.pins -= 1
            if slot.pins == 0 and not slot.pooled and slot.key is not None:
                if self._blocks.get(slot.key) is slot:
                    del self._blocks[slot.key]
                slot.key = None
            self._recycle(slot)

    def _recycle(self, slot: Slot) -> None:
        if slot.pins == 0 and slot.key is None and slot.pooled:
            self._free.append(slot)  # mmaps are never closed: a stray view keeps its own reference

    def take(self, key: BlockKey) -> Slot | None:
        """The published slot of ``key``, pinned (``release`` it), or None."""
        with self._lock:
            slot = self._blocks.get(key)
            if slot is None:
                return None
            self._blocks.move_to_end(key)
            slot.pins += 1
            return slot

    @contextmanager
    def pinned(self, key: BlockKey) -> Iterator[memoryview | None]:
        """A view of ``key``'s verified bytes while the context is open, or None."""
        slot = self.take(key)
        if slot is None:
            yield None
            return
        view = slot.view()
        try:
            yield view
        finally:
            view.release()
            self.release(slot)

    def mark_sent(self, key: BlockKey) -> None:
        """``key`` was handed to a reader in full (its buffer is reused first from now on)."""
        with self._lock:
            slot = self._blocks.get(key)
            if slot is not None:
                slot.sent = True

    def discard(self, key: BlockKey) -> None:
        with self._lock:
            slot = self._blocks.pop(key, None)
            if slot is not None:
                slot.key = None
                self._recycle(slot)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._blocks):
                slot = self._blocks.pop(key)
                slot.key = None
                self._recycle(slot)

    def __contains__(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._blocks
