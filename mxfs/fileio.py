"""Small blocking file helpers shared by origins and caches."""

from __future__ import annotations

import os
from pathlib import Path


def pread_file(path: Path | str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` of ``path`` (short only at end of file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
