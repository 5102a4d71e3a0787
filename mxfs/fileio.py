"""Small blocking file helpers shared by origins and caches."""

from __future__ import annotations

import mmap
import os
import threading
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


class BlobMap:
    """A read-only shared mapping of an open file (``fd``, which the caller owns), made at
    first use and made again when the file has grown past it.

    Replies are copied by the kernel straight from ``view`` (``writev`` into /dev/fuse): one
    copy, one system call, and no pipe, so a reply may be as large as the kernel allows.
    The mapping holds its own reference to the file: the owner may close ``fd`` while views
    are in use; the mapping goes when the last view and this object are gone (a copy from it
    beyond the file's end fails with EFAULT inside the system call, never a SIGBUS here).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()

    def view(self, offset: int, length: int) -> memoryview:
        """``[offset, offset+length)`` of the file as a view of the mapping (release it after use)."""
        end = offset + length
        mapped = self._map
        if mapped is None or len(mapped) < end:
            with self._lock:
                mapped = self._map
                if mapped is None or len(mapped) < end:
                    size = os.fstat(self.fd).st_size
                    if size < end:
                        raise OSError(f"file is {size} bytes, range ends at {end}")
                    mapped = self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        with memoryview(mapped) as whole:
            return whole[offset:end]

    def forget(self, offset: int, length: int) -> None:
        """Unmap the pages of ``[offset, offset+length)`` from this process (they stay in the
        page cache): ``POSIX_FADV_DONTNEED`` leaves mapped pages alone."""
        mapped = self._map
        if mapped is None or length <= 0:
            return
        start = offset - offset % mmap.PAGESIZE
        end = min(len(mapped), offset + length)
        if end > start:
            mapped.madvise(mmap.MADV_DONTNEED, start, end - start)
