"""Is a byte range of a file in the page cache? (Linux ``cachestat``, 6.5+.)

The FUSE session answers a read from a cache blob with a kernel copy from a mapping of it;
a copy of pages that are not cached waits for the disk, which must never happen on the
trio thread. When every page of the range is cached the copy is a memory copy and runs
inline, saving the worker-thread round trip (two wake-ups per request, the largest
per-request cost of a cold read after the copies themselves). Pages can still be evicted
between the check and the copy; that costs one disk read on the trio thread, not a wrong
byte.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_SYS_CACHESTAT = {"x86_64": 451, "aarch64": 451}.get(platform.machine())
_PAGE = os.sysconf("SC_PAGE_SIZE")


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_available = _SYS_CACHESTAT is not None


def resident(fd: int, offset: int, length: int) -> tuple[bool, bool]:
    """(every page of ``[offset, offset+length)`` of ``fd`` is in the page cache, none of
    them is dirty or under writeback); (False, False) when the kernel cannot tell (no
    ``cachestat``)."""
    global _available
    if not _available or length <= 0:
        return False, False
    first = offset // _PAGE
    pages = (offset + length + _PAGE - 1) // _PAGE - first
    rng, stat = _Range(first * _PAGE, pages * _PAGE), _Stat()
    if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(stat), 0) != 0:
        if ctypes.get_errno() == 38:  # ENOSYS: an older kernel, ask no more
            _available = False
        return False, False
    return stat.nr_cache >= pages, stat.nr_dirty == 0 and stat.nr_writeback == 0
