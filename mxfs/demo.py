"""``mxfs demo``: a generated model behind a real server and a real mount, on loopback.

The server and the daemon run in their own sessions (process groups), so Ctrl-C (SIGINT to the
terminal's foreground group) reaches only the demo; the demo then stops each child with
one SIGTERM and waits, bounded, for it to exit: the daemon unmounts before it exits. A
daemon that does not exit in time is killed and its mount detached, so Ctrl-C or SIGTERM
never leaves a dead mount or a process behind.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mxfs.errors import MxfsError
from mxfs.manifest.builder import file_sha256
from mxfs.manifest.names import hub_folder
from mxfs.modelgen import ModelShape, generate_model

DEMO_MODEL = "mxfs-demo/tiny-llama"
STOP_TIMEOUT_S = 30.0  # a daemon's unmount waits for in-flight reads


class _Stop(Exception):
    """SIGINT or SIGTERM asked the demo to stop."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _stop_child(proc: subprocess.Popen | None, what: str) -> None:
    """One SIGTERM, a bounded wait, then SIGKILL."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"{what} did not exit within {STOP_TIMEOUT_S:g}s of SIGTERM: killing it", file=sys.stderr)
        proc.kill()
        proc.wait(timeout=10)


def _stop_daemon(proc: subprocess.Popen | None, mnt: Path) -> None:
    from mxfs_daemon import mountpoint

    _stop_child(proc, "the daemon")
    if mountpoint.is_mounted(mnt):  # a daemon that died without unmounting: detach what it left
        print(f"the daemon left {mnt} mounted: detaching it", file=sys.stderr)
        try:
            mountpoint.unmount(mnt, lazy=True)
        except MxfsError as exc:  # never hide the error that ended the demo
            print(exc, file=sys.stderr)


_HANDED_OUT: set[int] = set()
_PORT_TRIES = 200


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port nothing listens on, for a server started right after this returns.

    A port the kernel picks (bind to 0) lies in the ephemeral range, so between this call and
    the server's bind any outgoing connection on the machine may take it as its local port: a
    flake seen in CI ("Address already in use"). The port is therefore drawn outside that
    range, checked free by binding it, and never handed out twice by this process.
    """
    low, high = _ephemeral_range()
    candidates = (10000, low - 1) if low - 1 - 10000 >= 1000 else (high + 1, 65535)
    for _ in range(_PORT_TRIES):
        port = random.randint(*candidates)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError(f"no free loopback port in {candidates[0]}-{candidates[1]} after {_PORT_TRIES} tries")


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")


def _wait_started(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log_path: Path) -> None:
    """``wait_for`` that gives up as soon as ``proc`` exits; both failures name its log."""

    def up() -> bool:
        if predicate():
            return True
        if proc.poll() is not None:
            raise MxfsError(f"{what} exited with status {proc.returncode} before it was up; see {log_path}")
        return False

    try:
        wait_for(up, timeout_s, what)
    except TimeoutError:
        raise MxfsError(f"{what} was not up after {timeout_s:g}s; see {log_path}") from None


def _demo_model(workdir: Path, size: int) -> Path:
    """The generated model, made again when an earlier run made it at another size."""
    origin = workdir / "origin" / DEMO_MODEL
    marker = workdir / "model-size"
    made = marker.read_text().strip() if marker.exists() else None
    if (origin / "config.json").exists() and made in (None, str(size)):
        return origin
    if origin.exists():
        shutil.rmtree(origin)
    print(f"generating a {size >> 20} MiB random model in {origin} ...", flush=True)
    generate_model(origin, ModelShape.for_size(size, hidden=512, vocab=4096), shard_bytes=128 << 20)
    marker.write_text(f"{size}\n")
    return origin


def run_demo(workdir: Path, size: int, check: bool = False) -> int:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    origin = _demo_model(workdir, size)
    mnt = workdir / "models"
    port = free_port()
    env = dict(os.environ, MXFS_LOG_FORMAT=os.environ.get("MXFS_LOG_FORMAT", "text"))
    cmd = [sys.executable, "-m", "mxfs"]
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = daemon = None
    try:
        server = subprocess.Popen(
            [*cmd, "server", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
             "--data-port", str(free_port()),
             "--cache-dir", str(workdir / "server-cache"), "--models-dir", str(workdir / "origin")],
            env=env, stdout=(workdir / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        from mxfs.rpc.client import MxfsClient

        client = MxfsClient(f"127.0.0.1:{port}")

        def server_up() -> bool:
            try:
                return client.health(timeout_s=1).status == "ok"
            except MxfsError:
                return False

        _wait_started(server_up, 30, "the server", server, workdir / "server.log")
        daemon = subprocess.Popen(
            [*cmd, "mount", str(mnt), "--server", f"127.0.0.1:{port}", "--cache-dir",
             str(workdir / "node-cache"), "--model", DEMO_MODEL],
            env=env, stdout=(workdir / "daemon.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_started(lambda: (mnt / DEMO_MODEL / "config.json").exists(), 60, "the node daemon", daemon,
                      workdir / "daemon.log")
        files = sorted(p.relative_to(mnt / DEMO_MODEL) for p in (mnt / DEMO_MODEL).rglob("*") if p.is_file())
        print(f"\nmxfs demo is up: server 127.0.0.1:{port}, mount {mnt}")
        print(f"model {DEMO_MODEL}: {len(files)} files, shown before any weight byte moved")
        if check:
            for rel in files:
                ok = file_sha256(mnt / DEMO_MODEL / rel) == file_sha256(origin / rel)
                print(f"  {'OK ' if ok else 'BAD'} {rel}")
                if not ok:
                    return 1
            print("every file read through the mount matches the origin")
            return 0
        print("\ntry:")
        print(f"  ls -l {mnt / DEMO_MODEL}")
        print(f"  ls {mnt / 'hub' / hub_folder(DEMO_MODEL) / 'snapshots'}")
        print(f"  mxfs prefetch {mnt / DEMO_MODEL}")
        print(f"  mxfs status {mnt}")
        print(f"  getfattr -d -m user.mxfs {mnt / DEMO_MODEL / 'config.json'}")
        print(f"  MODEL_EXPRESS_URL=127.0.0.1:{port} mxfs model files {DEMO_MODEL}")
        print("\nCtrl-C stops the demo and unmounts.", flush=True)
        while True:
            signal.pause()
    except _Stop as stop:
        print(f"\n{stop}: stopping the demo ...", flush=True)
        return 0
    finally:
        # a second Ctrl-C must not cut the clean-up short: signals wait until the children are gone
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        _stop_daemon(daemon, mnt)
        _stop_child(server, "the server")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
