"""Mount table helpers: find, recover and tune FUSE mounts (reads the mount table, never the mount)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

from mxfs.errors import MxfsError

log = logging.getLogger(__name__)
UNMOUNT_TIMEOUT_S = 30.0


class UnmountError(MxfsError):
    """The unmount tool refused or hung; the message carries what it said."""


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, 'major:minor') of every mount in this namespace."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            parts = line.split()
            sep = parts.index("-")
            out.append((_unescape(parts[4]), parts[sep + 1], parts[2]))
    return out


def is_mounted(path: str | Path) -> bool:
    target = os.path.realpath(path)
    return any(mp == target for mp, _, _ in mounts())


def recover_stale(path: str | Path) -> None:
    """Unmount a FUSE mount whose daemon died ("Transport endpoint is not connected")."""
    target = os.path.realpath(path)
    entries = [m for m in mounts() if m[0] == target]
    if not entries:
        return
    try:
        os.statvfs(target)  # always answered by the daemon: attribute caches can't hide a dead one
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            raise
        log.warning("recovering stale mount at %s (%s)", target, exc.strerror)
        unmount(target, lazy=True)
        return
    raise MxfsError(f"{target} is already mounted ({entries[0][1]}, its daemon answers): unmount it first, "
                    "or mount somewhere else")


def unmount(path: str | Path, lazy: bool = False) -> None:
    """Unmount with ``fusermount3 -u`` (works unprivileged for the mount's owner), else
    ``umount``; raises UnmountError with the tool's message."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u", *(["-z"] if lazy else []), str(path)]
    else:
        cmd = ["umount", *(["-l"] if lazy else []), str(path)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise UnmountError(f"cannot unmount {path}: {said[-1] if said else f'{cmd[0]} exited {exc.returncode}'}"
                           + ("" if lazy else " (busy? --lazy detaches it now)")) from None
    except subprocess.TimeoutExpired:
        raise UnmountError(f"cannot unmount {path}: {cmd[0]} did not finish in {UNMOUNT_TIMEOUT_S:g}s") from None


def tune(path: str | Path, read_ahead_kb: int = 1024, max_background: int = 64) -> None:
    """Raise kernel readahead and FUSE background requests for the mount (best effort).

    Must not run on the FUSE thread: it stats the mount.
    """
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    connections = Path("/sys/fs/fuse/connections")
    if connections.is_dir() and not any(connections.iterdir()):  # fusectl not mounted yet
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(connections)], capture_output=True, timeout=10)
    for file, value in (
        (f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", read_ahead_kb),
        (f"/sys/fs/fuse/connections/{minor}/max_background", max_background),
        (f"/sys/fs/fuse/connections/{minor}/congestion_threshold", max_background * 3 // 4),
    ):
        try:
            Path(file).write_text(str(value))
        except OSError as exc:
            log.debug("cannot tune %s: %s", file, exc)
