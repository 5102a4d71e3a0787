"""A small tmpfs for tests that need a disk that fills up (always unmounted afterwards)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.needs import missing


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``8m``) at ``path`` for the ``with`` block."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "mxfs-test", str(path)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        missing("tmpfs", f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(path: Path) -> int:
    """Write ``path`` until its filesystem is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                n = fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            written += n
            if n < len(chunk):
                with contextlib.suppress(OSError):
                    fh.write(chunk[:4096])
                break
    free = os.statvfs(path.parent)
    assert free.f_bavail == 0, f"{path.parent} still has {free.f_bavail} blocks free"
    return written
