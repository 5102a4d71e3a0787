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


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process so far (every thread)."""
    t = os.times()
    return t.user + t.system
