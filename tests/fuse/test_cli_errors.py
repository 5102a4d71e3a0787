"""The node commands (``prefetch``, ``status``, ``umount``) from where users run them, and the
one-line errors they give for what users get wrong: never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mxfs_daemon import mountpoint as mounts
from tests.conftest import MODEL
from tests.support.cli import assert_one_error


def _mxfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mxfs", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=dict(os.environ, MXFS_LOG_FORMAT="json"))


def _one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert_one_error(out.returncode, out.stderr, *words, command=out.args[3])  # [python, -m, mxfs, COMMAND, ...]


def test_prefetch_and_status_take_relative_paths(start_server, start_mount):
    daemon = start_mount(start_server())
    model = daemon.mountpoint / MODEL
    out = _mxfs("prefetch", ".", "--wait", "--no-progress", cwd=model)
    assert out.returncode == 0 and "complete" in out.stdout, out.stderr
    out = _mxfs("prefetch", MODEL.split("/")[1], "--no-progress", cwd=model.parent)
    assert out.returncode == 0, out.stderr
    out = _mxfs("status", ".", cwd=model)
    assert out.returncode == 0 and f"mount {daemon.mountpoint}" in out.stdout, out.stderr


def test_node_command_errors_are_one_line(start_server, start_mount, tmp_path: Path):
    daemon = start_mount(start_server())
    _one_line_error(_mxfs("prefetch", str(daemon.mountpoint / "no-such-org" / "no-model")), "no such file or model")
    _one_line_error(_mxfs("prefetch", str(daemon.mountpoint / MODEL.split("/")[0])), "not a model directory")
    _one_line_error(_mxfs("status", str(tmp_path)), "not inside a mxfs mount")
    _one_line_error(_mxfs("umount", str(tmp_path)), "cannot unmount", str(tmp_path))

    # a mount root whose control socket nobody answers on
    fake = tmp_path / "fake-root"
    fake.mkdir()
    os.setxattr(fake, "user.mxfs.control", str(tmp_path / "no.sock").encode())
    _one_line_error(_mxfs("status", str(fake)), "does not answer", "no.sock")

    # the daemon killed: its mount is stale, status says so, umount clears it
    daemon.stop(kill=True)
    assert mounts.is_mounted(daemon.mountpoint)
    _one_line_error(_mxfs("status", str(daemon.mountpoint)), "daemon is gone")
    out = _mxfs("umount", str(daemon.mountpoint))
    assert out.returncode == 0, out.stderr
    assert not mounts.is_mounted(daemon.mountpoint)


def test_demo_gives_up_when_its_server_exits(tmp_path: Path):
    """The demo stops waiting as soon as a child exits, and names the log that says why."""
    env = dict(os.environ, MODEL_EXPRESS_SERVER_BLOCK_SIZE="3000")  # the server refuses to start
    out = subprocess.run([sys.executable, "-m", "mxfs", "demo", "--dir", str(tmp_path), "--size", "8MiB"],
                         capture_output=True, text=True, timeout=120, env=env)
    _one_line_error(out, "the server exited with status 2", str(tmp_path / "server.log"))
    assert "block size" in (tmp_path / "server.log").read_text()
    assert not mounts.is_mounted(tmp_path / "models")
