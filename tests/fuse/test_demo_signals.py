"""Ctrl-C (SIGINT to the process group) or SIGTERM on ``mxfs demo`` leaves no mount and no process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mxfs.demo import wait_for
from mxfs_daemon import mountpoint as mounts
from tests.support.needs import need_fuse


def _processes_using(workdir: Path) -> list[int]:
    """Pids whose command line names ``workdir`` (the demo's server and daemon do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(workdir).encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("how", ["sigint-group", "sigterm"])
def test_stopping_the_demo_leaves_no_mount_and_no_process(tmp_path: Path, how: str) -> None:
    need_fuse()
    workdir = tmp_path / "demo"
    workdir.mkdir()
    out = tmp_path / "demo.out"
    demo = subprocess.Popen(
        [sys.executable, "-m", "mxfs", "demo", "--dir", str(workdir), "--size", "16MiB"],
        stdout=out.open("w"), stderr=subprocess.STDOUT, start_new_session=True,  # its own group, as in a shell
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    mnt = workdir / "models"
    try:
        wait_for(lambda: "Ctrl-C stops the demo" in out.read_text() or demo.poll() is not None, 180, "the demo")
        assert demo.poll() is None, out.read_text()
        assert mounts.is_mounted(mnt)
        assert len(_processes_using(workdir)) >= 2  # the server and the daemon
        if how == "sigint-group":
            os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=90) == 0, out.read_text()
        assert not mounts.is_mounted(mnt), (workdir / "daemon.log").read_text()[-3000:]
        assert _processes_using(workdir) == []
        assert "left" not in out.read_text()  # the daemon unmounted itself, nothing was detached for it
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
        for pid in _processes_using(workdir):  # only after a failure: keep the machine clean
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if mounts.is_mounted(mnt):
            mounts.unmount(mnt, lazy=True)
