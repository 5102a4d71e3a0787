"""Real processes for tests: an mxfs server and node daemons on 127.0.0.1, bounded waits."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mxfs.demo import free_port, wait_for
from mxfs.rpc.client import MxfsClient
from mxfs_daemon import mountpoint as mounts

PYTHON = [sys.executable, "-m", "mxfs"]


def _env() -> dict[str, str]:
    return dict(os.environ, MXFS_LOG_FORMAT="text", PYTHONUNBUFFERED="1")


@dataclass
class ServerProc:
    """``mxfs server`` in a subprocess; restartable on the same port and cache."""

    models_dir: Path
    cache_dir: Path
    block_size: int = 256 * 1024
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    data_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra: list[str] = field(default_factory=list)
    scheme: str = ""  # "https://" for a TLS server

    @property
    def address(self) -> str:
        return f"{self.scheme}127.0.0.1:{self.port}"

    def start(self) -> ServerProc:
        self.log_path = self.cache_dir.parent / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [*PYTHON, "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--data-port", str(self.data_port),
             "--cache-dir", str(self.cache_dir),
             "--models-dir", str(self.models_dir), "--block-size", str(self.block_size), *self.extra],
            env=_env(), stdout=self.log_path.open("a"), stderr=subprocess.STDOUT,
        )
        client = MxfsClient(self.address)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                return client.health(timeout_s=1).status == "ok"
            except Exception:
                return False

        try:
            wait_for(up, 30, "mxfs server")
        finally:
            client.close()
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the server; one that ignores SIGTERM for 20 s fails the stop,
        and is killed so that it does not outlive the test."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"server did not exit within 20 s of SIGTERM: {self.log()[-2000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus counter/gauge scraped from the server (see ``scrape_metric``)."""
        return scrape_metric(self.metrics_port, name, **labels)


def scrape_metric(port: int, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter/gauge served on 127.0.0.1:``port`` over the label sets
    that include every ``labels`` pair (none given: all label sets)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in body.decode().splitlines():
        head, _, value = line.rpartition(" ")
        if (head == name and not wanted) or (head.startswith(name + "{") and all(w in head for w in wanted)):
            total += float(value)
    return total


@dataclass
class MountProc:
    """``mxfs mount`` in a subprocess."""

    mountpoint: Path
    cache_dir: Path
    server: str
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    killed: bool = False  # the last stop was a SIGKILL: a stale mount is expected

    def start(self, wait_model: str | None = None) -> MountProc:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.log_path = self.cache_dir.parent / f"daemon-{self.mountpoint.name}.log"
        self.proc = subprocess.Popen(
            [*PYTHON, "mount", str(self.mountpoint), "--server", self.server,
             "--cache-dir", str(self.cache_dir), *self.extra],
            env=_env(), stdout=self.log_path.open("a"), stderr=subprocess.STDOUT,
        )
        self.killed = False

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log()}")
            if not mounts.is_mounted(self.mountpoint):
                return False
            try:
                os.statvfs(self.mountpoint)  # a stale mount of a killed daemon fails here
            except OSError:
                return False
            return wait_model is None or (self.mountpoint / wait_model).is_dir()

        wait_for(up, 30, "mxfs mount")
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the daemon. After SIGTERM the daemon must have removed its own
        mount: if it did not, the mount is cleaned up (to keep the machine clean) and the
        stop fails. A dead mount a SIGKILL left behind is the test's point: it is cleaned
        quietly once the test no longer restarts the daemon (a live mount at the same path,
        of a daemon started since, is never touched)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.killed = kill
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self._clean_mount()
                raise AssertionError(f"daemon did not exit within 30 s of SIGTERM: {self.log()[-2000:]}") from None
            if not kill and mounts.is_mounted(self.mountpoint):
                self._clean_mount()
                raise AssertionError(f"daemon exited (rc {self.proc.returncode}) without unmounting "
                                     f"{self.mountpoint}: {self.log()[-2000:]}")
            return
        if self._dead_mount():
            self._clean_mount()
            if not self.killed:
                raise AssertionError(f"daemon died leaving {self.mountpoint} mounted: {self.log()[-2000:]}")

    def _dead_mount(self) -> bool:
        """A mount at the mountpoint whose daemon is gone ("Transport endpoint is not connected")."""
        if not mounts.is_mounted(self.mountpoint):
            return False
        try:
            os.statvfs(self.mountpoint)
        except OSError as exc:
            return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        return False

    def _clean_mount(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


def run_all(steps: Iterable[Callable[[], None]]) -> None:
    """Run every teardown step, then raise the first failure one raised (an AssertionError:
    a process that did not stop cleanly); the later steps still run."""
    failures: list[AssertionError] = []
    for step in steps:
        try:
            step()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def stop_all(procs: list[MountProc]) -> None:
    """Stop every daemon, then raise the first failure (a daemon that left its mount)."""
    run_all(proc.stop for proc in procs)


def fuse_available() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None


@dataclass
class RedisProc:
    """A real redis-server on 127.0.0.1 (no persistence), for registry tests."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, 20, "redis-server")
        client.close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise
