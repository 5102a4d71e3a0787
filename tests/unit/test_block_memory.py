"""The server's reused block buffers: pinned bytes never change, the pool stays bounded."""

from __future__ import annotations

import mmap

from mxfs.manifest.model import BlockKey
from mxfs.server.block_memory import BlockMemory

CAP = 4 * mmap.PAGESIZE


def _key(i: int) -> BlockKey:
    return BlockKey("ab" * 32, CAP, i)


def _put(memory: BlockMemory, i: int, length: int = CAP) -> None:
    slot = memory.lend(CAP)
    slot.view(length)[:] = bytes([i]) * length
    memory.publish(_key(i), slot, length)
    memory.release(slot)


def test_published_blocks_are_reused_lru_and_the_pool_stays_bounded():
    memory = BlockMemory(3 * CAP)
    for i in range(5):
        _put(memory, i, CAP - i)
    assert memory.pooled_bytes == 3 * CAP and memory.overflow == 0
    assert [i for i in range(5) if _key(i) in memory] == [2, 3, 4]
    with memory.pinned(_key(3)) as view:
        assert bytes(view) == bytes([3]) * (CAP - 3)
    _put(memory, 5)  # takes the least recently used buffer: 2 (3 was just read)
    assert [i for i in range(6) if _key(i) in memory] == [3, 4, 5]
    with memory.pinned(_key(9)) as view:
        assert view is None


def test_a_pinned_block_keeps_its_bytes_while_others_come_and_go():
    memory = BlockMemory(2 * CAP)
    _put(memory, 1)
    held = memory.take(_key(1))
    assert held is not None
    for i in range(2, 8):  # every other buffer is reused over and over
        _put(memory, i)
    assert bytes(held.view()) == bytes([1]) * CAP  # never handed out while pinned
    assert _key(1) in memory
    memory.release(held)
    _put(memory, 8)
    _put(memory, 9)
    assert _key(1) not in memory


def test_when_every_buffer_is_pinned_one_is_lent_outside_the_bound_and_freed_after_use():
    memory = BlockMemory(2 * CAP)
    a, b = memory.lend(CAP), memory.lend(CAP)
    extra = memory.lend(CAP)
    assert memory.overflow == 1 and memory.pooled_bytes == 2 * CAP and not extra.pooled
    extra.view(CAP)[:] = b"x" * CAP
    memory.publish(_key(7), extra, CAP)
    with memory.pinned(_key(7)) as view:  # readable while its filler still holds it
        assert bytes(view) == b"x" * CAP
    memory.release(extra)
    assert _key(7) not in memory  # gone with its last pin
    for slot in (a, b):
        memory.release(slot)
    _put(memory, 1)
    assert memory.overflow == 1 and memory.pooled_bytes == 2 * CAP


def test_buffers_are_page_aligned_for_direct_io():
    memory = BlockMemory(8 * CAP)
    slot = memory.lend(CAP - 100)
    assert slot.capacity == CAP
    import ctypes

    address = ctypes.addressof(ctypes.c_char.from_buffer(slot.buffer))
    assert address % mmap.PAGESIZE == 0
    memory.release(slot)


def test_a_block_already_sent_gives_its_buffer_before_the_pool_grows():
    memory = BlockMemory(8 * CAP)
    _put(memory, 1)
    _put(memory, 2)
    memory.mark_sent(_key(1))
    _put(memory, 3)
    assert memory.pooled_bytes == 2 * CAP  # 1's buffer was reused, nothing new was mapped
    assert [i for i in (1, 2, 3) if _key(i) in memory] == [2, 3]
