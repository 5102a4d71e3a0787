#!/usr/bin/env python3
"""How the kernel session reads /dev/fuse: trio ``wait_readable`` on a non-blocking fd
(the default) vs blocking reads in threads on cloned fds. Needs root and /dev/fuse.

A child process serves a tiny in-memory filesystem (one 256 MiB file) with the session;
this process measures request round trips (``getxattr``, never cached by the kernel) and
uncached 1 MiB reads with the daemon's
bdi tuning (the FUSE page cache is dropped before each pass).
Usage: python bench/fuse_session.py [--threads 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = 256 << 20
DATA = bytes(range(256)) * (1 << 12)  # 1 MiB pattern


def serve(mountpoint: Path, threads: int) -> None:
    import trio

    from mxfs.fuse.interface import Attr, Entry, FsStats, FuseError, Opened
    from mxfs.fuse.kernel import mount
    from mxfs.fuse.kernel.session import Session

    class Fs:
        def connected(self, *a) -> None: ...
        def forget(self, items) -> None: ...

        async def lookup(self, parent: int, name: bytes) -> Entry:
            if name != b"data":
                raise FuseError(errno.ENOENT)
            return Entry(Attr(2, stat.S_IFREG | 0o444, SIZE), 60, 60)

        async def getattr(self, inode: int) -> Entry:
            mode = stat.S_IFDIR | 0o555 if inode == 1 else stat.S_IFREG | 0o444
            return Entry(Attr(inode, mode, SIZE if inode == 2 else 4096), 60, 60)

        async def open(self, inode: int, flags: int) -> Opened:
            return Opened(1)

        async def read(self, fh: int, offset: int, size: int) -> memoryview:
            start = offset % len(DATA)
            return memoryview(DATA)[start : start + min(size, SIZE - offset, len(DATA) - start)]

        async def release(self, fh: int) -> None: ...

        async def getxattr(self, inode: int, name: bytes) -> bytes:
            return b"x"

        async def statfs(self) -> FsStats:
            return FsStats(4096, 0, 0, 2)

    fd = mount.mount(mountpoint)
    print("ready", flush=True)
    trio.run(Session(Fs(), fd, passthrough=False, reader_threads=threads).run)


def measure(mountpoint: Path, seconds: float) -> tuple[float, float]:
    path = mountpoint / "data"
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        os.getxattr(path, "user.x")
        n += 1
    rtt = n / (time.perf_counter() - start)
    fd = os.open(path, os.O_RDONLY)
    total, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.lseek(fd, 0, os.SEEK_SET)
            while chunk := os.read(fd, 1 << 20):
                total += len(chunk)
    finally:
        os.close(fd)
    return rtt, total / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2, help="reader threads (cloned fds) of the threaded mode")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--serve", nargs=2, metavar=("MOUNTPOINT", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return 0
    from mxfs.fuse.kernel import mount
    from mxfs_daemon.mountpoint import tune

    print("| reader | getxattr round trips/s | uncached 1 MiB reads GB/s |\n|---|---|---|")
    for label, threads in (("trio wait_readable", 0), (f"{args.threads} threads, cloned fds", args.threads)):
        mnt = Path(tempfile.mkdtemp(prefix="mxfs-session-bench-"))
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(mnt), str(threads)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 10
            while not (mnt / "data").exists():
                assert time.monotonic() < deadline, "mount did not come up"
                time.sleep(0.05)
            tune(mnt)
            rtt, rate = measure(mnt, args.seconds)
            print(f"| {label} | {rtt:,.0f} | {rate / 1e9:.2f} |", flush=True)
        finally:
            mount.unmount(mnt, lazy=True)
            child.wait(timeout=20)
            mnt.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
