"""``mxfs mount`` started wrongly: one clear error line, a non-zero exit, no traceback, and
nothing left behind (no mount, no control socket taken over, no lock held)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxfs.demo import free_port, wait_for
from mxfs_daemon import mountpoint as mounts
from tests.conftest import MODEL
from tests.support.cli import assert_one_error
from tests.support.cluster import MountProc, stop_all
from tests.support.needs import need_fuse

RUN_TIMEOUT_S = 60


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator:
    """Factory of running daemons (one mode is enough here), always stopped; a daemon that
    leaves its mount fails the test."""
    need_fuse()
    procs: list[MountProc] = []

    def start(server: str, name: str = "node", wait_model: str | None = MODEL, extra: list[str] | None = None):
        proc = MountProc(tmp_path / name / "mnt", tmp_path / name / "cache", server, extra or [])
        procs.append(proc)
        return proc.start(wait_model=wait_model)

    yield start
    stop_all(procs)


def _mount(mountpoint: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``mxfs mount`` to its end; it must not leave a mount at ``mountpoint`` (one it
    left is detached so the machine stays clean, and the test fails)."""
    try:
        out = subprocess.run([sys.executable, "-m", "mxfs", "mount", str(mountpoint), *args], capture_output=True,
                             text=True, timeout=RUN_TIMEOUT_S, env=dict(os.environ, MXFS_LOG_FORMAT="json"))
    except subprocess.TimeoutExpired as exc:
        _detach(mountpoint)
        raise AssertionError(f"mxfs mount did not exit within {RUN_TIMEOUT_S} s: {exc.stderr}") from None
    if mounts.is_mounted(mountpoint):
        _detach(mountpoint)
        raise AssertionError(f"mxfs mount exited {out.returncode} leaving {mountpoint} mounted: {out.stderr}")
    return out


def _detach(mountpoint: Path) -> None:
    if mounts.is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)


def _one_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert_one_error(out.returncode, out.stderr, *words, command="mount")


def test_mountpoint_or_cache_dir_that_is_a_file(tmp_path: Path):
    need_fuse()
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    _one_error(_mount(afile, "--server", "127.0.0.1:1", "--cache-dir", str(tmp_path / "cache")),
               "mountpoint", str(afile), "not a directory")
    assert not (tmp_path / "cache").exists()  # refused before anything was made
    _one_error(_mount(tmp_path / "mnt", "--server", "127.0.0.1:1", "--cache-dir", str(afile)),
               "cache_dir", str(afile), "not a directory")
    assert afile.read_text() == "keep me\n"


def test_cache_sizes_that_cannot_work(tmp_path: Path):
    need_fuse()
    base = ("--server", "127.0.0.1:1", "--cache-dir", str(tmp_path / "cache"))
    _one_error(_mount(tmp_path / "mnt", *base, "--cache-size", "4096"), "cache_size 4096", "smaller than one block")
    _one_error(_mount(tmp_path / "mnt", *base, "--cache-index-size", "1000TiB"), "cache_index_size", "1TiB")


def test_bad_model_name_is_refused_before_mounting(tmp_path: Path):
    """It used to mount, then hang (or print a traceback) when the preload task failed."""
    need_fuse()
    out = _mount(tmp_path / "mnt", "--server", "127.0.0.1:1", "--cache-dir", str(tmp_path / "cache"),
                 "--model", "../etc")
    _one_error(out, "model '../etc'")


def test_missing_tls_ca_file(tmp_path: Path):
    need_fuse()
    missing = tmp_path / "ca.pem"
    out = _mount(tmp_path / "mnt", "--server", "https://127.0.0.1:1", "--cache-dir", str(tmp_path / "cache"),
                 "--tls-ca-file", str(missing))
    _one_error(out, "tls_ca_file", str(missing), "No such file")


def test_already_mounted_mountpoint(start_server, daemons, tmp_path: Path):
    first = daemons(start_server().address)
    out = _mount_over(first.mountpoint, "--server", first.server, "--cache-dir", str(tmp_path / "other-cache"))
    _one_error(out, str(first.mountpoint), "already mounted")
    assert (first.mountpoint / MODEL / "config.json").read_bytes()  # the first daemon still serves


def _mount_over(mountpoint: Path, *args: str) -> subprocess.CompletedProcess:
    """``mxfs mount`` on a mountpoint a live daemon holds (which must stay mounted)."""
    return subprocess.run([sys.executable, "-m", "mxfs", "mount", str(mountpoint), *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env=dict(os.environ, MXFS_LOG_FORMAT="json"))


def test_second_daemon_on_the_same_cache_dir(start_server, daemons, tmp_path: Path):
    """It used to mount, share the cache index, and take the first daemon's control socket away."""
    first = daemons(start_server().address)
    out = _mount(tmp_path / "second", "--server", first.server, "--cache-dir", str(first.cache_dir))
    _one_error(out, "cache dir", str(first.cache_dir), "in use by another mxfs mount", f"pid {first.proc.pid}")
    status = subprocess.run([sys.executable, "-m", "mxfs", "status", str(first.mountpoint)], capture_output=True,
                            text=True, timeout=RUN_TIMEOUT_S)
    assert status.returncode == 0, status.stderr  # its control socket is still there
    first.stop()  # the lock goes with the daemon: the cache dir is usable again
    again = daemons(first.server)  # same mountpoint and cache dir
    assert again.proc.poll() is None


def test_ports_in_use(start_server, tmp_path: Path):
    need_fuse()
    server = start_server()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        base = ("--server", server.address, "--cache-dir", str(tmp_path / "cache"))
        _one_error(_mount(tmp_path / "mnt", *base, "--metrics-port", port), "metrics", port, "in use")
        _one_error(_mount(tmp_path / "mnt", *base, "--peer-port", port, "--peer-host", "127.0.0.1",
                          "--peer-token", "t"), "--peer-port", port, "in use")
    assert not (tmp_path / "cache" / "mxfsd.sock").exists()


def test_unreachable_server_mounts_and_resolves_model_once_it_answers(start_server, daemons, tmp_path: Path):
    """A DaemonSet may start before the server: the mount comes up, says the server does not
    answer, and the --model is resolved as soon as the server does (no lookup needed)."""
    port = free_port()
    node = daemons(f"127.0.0.1:{port}", wait_model=None, extra=["--model", MODEL])
    wait_for(lambda: "does not answer" in node.log(), 30, "the daemon to say the server does not answer")
    start_server(port=port)
    wait_for(lambda: f"model {MODEL}@main ready" in node.log(), 60, "the --model to resolve")
    assert (node.mountpoint / MODEL / "config.json").read_bytes()
