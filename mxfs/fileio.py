"""Small blocking file helpers shared by origins and caches."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically (a uniquely named temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pread_file(path: Path | str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` of ``path`` (short only at end of file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def path_under(root: Path | str, *parts: str) -> Path:
    """``root/part/...``, refused (ValueError) unless it stays strictly under ``root``.

    Every cache and state path built from a name, revision or digest that came over the
    wire goes through here, after the value itself was validated: a second, independent
    guard against ``..``, absolute parts and NUL bytes.
    """
    base = os.path.normpath(os.fspath(root))
    for part in parts:
        if not part or "\x00" in part or part.startswith("/"):
            raise ValueError(f"unsafe path component {part!r} under {base}")
    full = os.path.normpath(os.path.join(base, *parts))
    if os.path.commonpath([base, full]) != base or full == base:
        raise ValueError(f"{os.path.join(base, *parts)!r} escapes {base}")
    return Path(full)
