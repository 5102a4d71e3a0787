"""The daemon unmounts itself on SIGINT/SIGTERM, also when a second signal follows at
once (Ctrl-C reaches a whole process group, then a supervisor sends SIGTERM) and while
files are still open."""

from __future__ import annotations

import signal

from mxfs_daemon import mountpoint as mounts
from tests.conftest import MODEL


def _wait_exit(daemon) -> int:
    return daemon.proc.wait(timeout=30)


def test_sigint_then_sigterm_leaves_no_mount(start_server, start_mount):
    daemon = start_mount(start_server())
    assert (daemon.mountpoint / MODEL / "config.json").read_bytes()
    daemon.proc.send_signal(signal.SIGINT)
    daemon.proc.send_signal(signal.SIGTERM)
    assert _wait_exit(daemon) == 0, daemon.log()[-2000:]
    assert not mounts.is_mounted(daemon.mountpoint)
    assert "already unmounting" in daemon.log() or "unmounted" in daemon.log()


def test_sigterm_with_open_files_detaches(start_server, start_mount):
    daemon = start_mount(start_server())
    with open(daemon.mountpoint / MODEL / "config.json", "rb") as fh:
        assert fh.read(10)
        daemon.proc.send_signal(signal.SIGTERM)
        assert _wait_exit(daemon) == 0, daemon.log()[-2000:]
        assert not mounts.is_mounted(daemon.mountpoint)
    assert "busy" in daemon.log()
