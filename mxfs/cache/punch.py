"""Free the disk space of a byte range of a file (fallocate PUNCH_HOLE)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``[offset, offset+length)``; reads of it return zeros afterwards."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def punch_file(path: Path, offset: int, length: int, what: object) -> None:
    """``punch_hole`` on the file at ``path`` (best effort: a file that cannot be opened is
    left alone, a failed punch is logged with ``what``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        punch_hole(fd, offset, length)
    except OSError as exc:
        log.warning("cannot punch hole for %s: %s", what, exc)
    finally:
        os.close(fd)
