"""Mount and unmount a FUSE filesystem on a /dev/fuse descriptor (no libfuse).

As root the daemon calls mount(2) itself; without CAP_SYS_ADMIN it asks ``fusermount3``
for a mounted descriptor (passed back over a unix socket, as libfuse does). The
connection can also be aborted through fusectl, which releases processes blocked on a
session that died.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MNT_DETACH = 2
FSNAME = "mxfs"
FSTYPE = "fuse.mxfs"
FUSECTL = Path("/sys/fs/fuse/connections")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(mountpoint: Path, allow_other: bool = True) -> int:
    """Mount a read-only FUSE filesystem at ``mountpoint``; returns the /dev/fuse fd."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    st = os.stat(mountpoint)
    opts = [f"fd={fd}", f"rootmode={st.st_mode & 0o170000:o}", f"user_id={os.getuid()}",
            f"group_id={os.getgid()}", "default_permissions"]
    if allow_other:
        opts.append("allow_other")
    data = ",".join(opts).encode()
    rc = _libc.mount(FSNAME.encode(), str(mountpoint).encode(), FSTYPE.encode(),
                     MS_RDONLY | MS_NOSUID | MS_NODEV, data)
    if rc == 0:
        return fd
    err = ctypes.get_errno()
    os.close(fd)
    if err in (errno.EPERM, errno.EACCES):
        return _mount_with_fusermount(mountpoint, allow_other)
    raise OSError(err, f"mount {mountpoint}: {os.strerror(err)}")


def _mount_with_fusermount(mountpoint: Path, allow_other: bool) -> int:
    """Unprivileged mount: fusermount3 opens /dev/fuse, mounts, and hands us the fd."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OSError(errno.EPERM, "mounting needs CAP_SYS_ADMIN or fusermount3")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    opts = f"ro,nosuid,nodev,fsname={FSNAME},subtype=mxfs,default_permissions"
    if allow_other:
        opts += ",allow_other"
    with ours, theirs:
        proc = subprocess.run([tool, "-o", opts, "--", str(mountpoint)], pass_fds=[theirs.fileno()],
                              env=dict(os.environ, _FUSE_COMMFD=str(theirs.fileno())),
                              capture_output=True, timeout=30)
        if proc.returncode != 0:
            raise OSError(errno.EPERM, f"fusermount3: {proc.stderr.decode(errors='replace').strip()}")
        fds = array.array("i")
        _, ancdata, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: fds.itemsize])
    if not fds:
        raise OSError(errno.EIO, "fusermount3 passed no descriptor")
    os.set_inheritable(fds[0], False)
    return fds[0]


def unmount(mountpoint: Path, lazy: bool = False) -> None:
    """Unmount; ``lazy`` detaches even while files are open (they fail once the fd closes)."""
    rc = _libc.umount2(str(mountpoint).encode(), MNT_DETACH if lazy else 0)
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EPERM, errno.EACCES):
        raise OSError(err, f"umount {mountpoint}: {os.strerror(err)}")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OSError(err, f"umount {mountpoint}: {os.strerror(err)}")
    subprocess.run([tool, "-u", *(["-z"] if lazy else []), str(mountpoint)], check=True,
                   capture_output=True, timeout=30)


def abort(device_minor: int) -> None:
    """Abort a connection by device minor: every waiting request fails with ENOTCONN."""
    if FUSECTL.is_dir() and not any(FUSECTL.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], capture_output=True, timeout=10)
    try:
        (FUSECTL / str(device_minor) / "abort").write_text("1")
    except OSError as exc:
        log.debug("cannot abort fuse connection %d: %s", device_minor, exc)
