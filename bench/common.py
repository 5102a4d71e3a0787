"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

import os
import time
from pathlib import Path

READ_SIZE = 1 << 20


def read_all(root: Path) -> tuple[int, float]:
    """Sequentially read every file under ``root`` with 1 MiB reads into one reused buffer.

    Returns (bytes, seconds); raises OSError as the reads do.
    """
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            while n := os.readv(fd, [view]):
                total += n
        finally:
            os.close(fd)
    return total, time.perf_counter() - start
