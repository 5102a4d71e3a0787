"""The contract between the filesystem logic (``ops.py``) and a FUSE transport.

Plain dataclasses and one error type: the operations never see protocol bytes, and the
transport (``mxfs/fuse/kernel/session.py``) never decides policy.
"""

from __future__ import annotations

import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mxfs.fileio import BlobMap


class FuseError(Exception):
    """Reply to the request with ``errno``."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


@dataclass(frozen=True)
class Attr:
    """What stat(2) shows for an inode."""

    inode: int
    mode: int
    size: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    blksize: int = 1 << 20
    time_ns: int = 0  # atime = mtime = ctime

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512

    @property
    def is_dir(self) -> bool:
        return stat_mod.S_ISDIR(self.mode)


@dataclass(frozen=True)
class Entry:
    """A lookup result: the attributes and how long the kernel may cache name and attributes."""

    attr: Attr
    entry_timeout: float
    attr_timeout: float


@dataclass(frozen=True)
class DirEntry:
    """One READDIR(PLUS) record; ``next_offset`` is where the listing resumes after it."""

    name: bytes
    entry: Entry
    next_offset: int


@dataclass(frozen=True)
class Opened:
    """An open file: its handle and how the kernel should do its I/O.

    ``backing_id`` (from ``BackingFiles.open``) makes the kernel read and mmap the backing
    file itself: no READ of this handle ever reaches the daemon.
    """

    fh: int
    keep_cache: bool = True
    backing_id: int | None = None


@dataclass(frozen=True)
class FileRange:
    """A read answered straight from a local file: the transport copies ``length`` bytes at
    ``offset`` of ``blob`` into the reply (one kernel copy, no byte through Python)."""

    blob: BlobMap
    offset: int
    length: int
    drop_cache: bool = False  # the FUSE inode keeps these pages: drop the file's copy after
    done: Callable[[], None] | None = None  # called once the range was handed on (or failed)


@dataclass(frozen=True)
class FsStats:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    name_max: int = 255


class BackingFiles(Protocol):
    """Kernel passthrough: register a local file as the backing of passthrough opens."""

    def open(self, fd: int) -> int:
        """Register ``fd``; returns the backing id an open reply names (OSError on failure)."""

    def close(self, backing_id: int) -> None:
        """Drop the registration (the kernel keeps the file while opens still use it)."""


class Notifier(Protocol):
    """Unsolicited messages to the kernel."""

    def store(self, inode: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Put ``data`` into the kernel page cache of ``inode`` (OSError when it cannot)."""

    def invalidate(self, inode: int) -> None:
        """Drop the kernel page cache of ``inode``."""
