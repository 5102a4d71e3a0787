"""Mount table reading and the mount/umount syscalls the node plugin needs.

``os.path.ismount`` cannot see a bind mount of a directory on the same filesystem,
so the kernel's own table, ``/proc/self/mountinfo``, is the only truth used here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8  # never follow a symlink placed at a target path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    device: str  # "major:minor"
    root: str  # the directory of the filesystem mounted here ("/org/name" for a bind)
    mount_point: str
    options: frozenset[str]  # per-mount options: ro/rw, nosuid, nodev, ...
    fstype: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes of space, tab, newline and backslash."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text, in table order (a later entry is mounted on top)."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10:
            continue
        sep = fields.index("-", 6)
        entries.append(
            MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=frozenset(fields[5].split(",")),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
            )
        )
    return entries


def read_mountinfo() -> list[MountEntry]:
    """The calling process's mount table."""
    return parse_mountinfo(MOUNTINFO.read_text())


def mount_at(path: str | os.PathLike[str]) -> MountEntry | None:
    """The topmost mount whose mount point is exactly ``path``, or None."""
    wanted = os.fspath(path)
    found = None
    for entry in read_mountinfo():
        if entry.mount_point == wanted:
            found = entry
    return found


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}", path)


def bind_read_only(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Bind-mount ``source`` at ``target``, then make that one mount read-only.

    A bind mount ignores MS_RDONLY on creation; the read-only flag is applied by a
    second, remount call. If that fails the bind is undone, so no writable view stays.
    """
    src, dst = os.fsencode(source), os.fsencode(target)
    _check(_libc.mount(src, dst, None, MS_BIND, None), "bind mount on", os.fsdecode(dst))
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    result = _libc.mount(None, dst, None, flags, None)
    if result != 0:
        err = ctypes.get_errno()
        _libc.umount2(dst, MNT_DETACH)
        raise OSError(err, f"read-only remount of {os.fsdecode(dst)}: {os.strerror(err)}")


def unmount(target: str | os.PathLike[str]) -> None:
    """Unmount ``target`` (not following a symlink there); a busy mount is detached lazily
    (its pod is already gone). EINVAL (not a mount point any more) counts as done.
    """
    path = os.fsencode(target)
    if _libc.umount2(path, UMOUNT_NOFOLLOW) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EINVAL:
        return
    if err == errno.EBUSY:
        _check(_libc.umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW), "lazy unmount of", os.fsdecode(path))
        return
    raise OSError(err, f"unmount {os.fsdecode(path)}: {os.strerror(err)}", os.fsdecode(path))
