"""``mxfs server`` started wrongly: one ``error:`` line naming the problem, exit status 2, no
traceback, and no port left open by the parts that had started (the real CLI, in a subprocess)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mxfs.config import ServerConfig
from mxfs.demo import free_port, wait_for
from mxfs.server.app import Server
from tests.support.cli import assert_one_error
from tests.support.tls import make_tls

TIMEOUT_S = 60  # a server that starts instead of failing is killed, and the test fails


@dataclass
class Ports:
    grpc: int
    metrics: int
    data: int

    def args(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.grpc), "--metrics-port", str(self.metrics),
                "--data-port", str(self.data)]


@dataclass
class Result:
    rc: int
    stderr: str


@pytest.fixture
def ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


def _env() -> dict[str, str]:
    return dict(os.environ, MXFS_LOG_FORMAT="text", PYTHONUNBUFFERED="1")


def _server(tmp_path: Path, ports: Ports, *extra: str) -> Result:
    args = [sys.executable, "-m", "mxfs", "server", *ports.args()]
    if "--cache-dir" not in extra:
        args += ["--cache-dir", str(tmp_path / "cache")]
    try:
        proc = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path,
                              env=_env())
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        pytest.fail(f"mxfs server {' '.join(extra)} did not exit in {TIMEOUT_S}s: {exc.stderr!r}")
    return Result(proc.returncode, proc.stderr)


def _assert_one_error(result: Result, *words: str) -> str:
    return assert_one_error(result.rc, result.stderr, *words, command="server")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def taken() -> Iterator:
    """Factory: a listening socket on 127.0.0.1 (``reuse_port``: as a gRPC server's own)."""
    socks: list[socket.socket] = []

    def take(reuse_port: bool = False) -> int:
        sock = socket.socket()
        socks.append(sock)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        return sock.getsockname()[1]

    yield take
    for s in socks:
        s.close()


# -- ports ----------------------------------------------------------------------------------

@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "reuseport"])
def test_grpc_port_in_use(tmp_path: Path, ports: Ports, taken, reuse_port: bool) -> None:
    """Named in one line (no grpcio RuntimeError traceback); a port held by a listener that allows
    sharing (another gRPC server) is in use too, not silently shared."""
    ports.grpc = taken(reuse_port)
    line = _assert_one_error(_server(tmp_path, ports), f"127.0.0.1:{ports.grpc}", "--port",
                             "Address already in use")
    assert "--data-port" not in line and "--metrics-port" not in line
    assert _free(ports.data) and _free(ports.metrics)


def test_metrics_port_in_use(tmp_path: Path, ports: Ports, taken) -> None:
    ports.metrics = taken()
    _assert_one_error(_server(tmp_path, ports), f"127.0.0.1:{ports.metrics}", "--metrics-port",
                      "Address already in use")
    assert _free(ports.grpc) and _free(ports.data)


def test_data_port_in_use(tmp_path: Path, ports: Ports, taken) -> None:
    ports.data = taken()
    _assert_one_error(_server(tmp_path, ports), f"127.0.0.1:{ports.data}", "--data-port", "Address already in use")
    assert _free(ports.grpc) and _free(ports.metrics)


def test_failed_start_closes_what_it_had_opened(tmp_path: Path, taken) -> None:
    """In process: a bind that fails stops the data plane and gRPC server already started."""
    config = ServerConfig(host="127.0.0.1", port=free_port(), metrics_port=taken(), data_port=free_port(),
                          cache_dir=str(tmp_path / "cache"))
    config.validate()
    server = Server(config)
    with pytest.raises(OSError, match="--metrics-port"):
        server.start()
    assert _free(config.port), "gRPC port left open"
    assert _free(config.data_port), "data port left open"


# -- directories ------------------------------------------------------------------------------

def test_cache_dir_is_a_file(tmp_path: Path, ports: Ports) -> None:
    (tmp_path / "file").write_text("x")
    _assert_one_error(_server(tmp_path, ports, "--cache-dir", str(tmp_path / "file")),
                      "cache_dir", str(tmp_path / "file"), "is not a directory")


def test_cache_dir_not_writable(tmp_path: Path, ports: Ports) -> None:
    """/proc exists and takes no files, even from root."""
    _assert_one_error(_server(tmp_path, ports, "--cache-dir", "/proc"), "cache_dir /proc is not a writable directory")


@pytest.mark.parametrize("flag", ["--models-dir", "--origin"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_local_model_directory_missing_or_a_file(tmp_path: Path, ports: Ports, flag: str, kind: str) -> None:
    """A typo in the local origin was a server that started and found no model; now it does not start."""
    path = tmp_path / "models"
    if kind == "file":
        path.write_text("x")
    name = "models_dir" if flag == "--models-dir" else "origin"
    what = "does not exist" if kind == "missing" else "is not a directory"
    _assert_one_error(_server(tmp_path, ports, flag, str(path)), f"{name} {path} {what}")
    assert _free(ports.grpc)


# -- TLS --------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_plane", [True, False], ids=["data-on", "data-off"])
@pytest.mark.parametrize("bad", ["cert-not-pem", "key-not-pem", "swapped", "mismatch"])
def test_tls_files_not_a_matching_pem_pair(tmp_path: Path, ports: Ports, bad: str, data_plane: bool) -> None:
    """Named file and problem, with or without the data plane (without it, gRPC's bind failed
    with a traceback: it got the bad PEM first)."""
    tls = make_tls(tmp_path / "tls")
    other = make_tls(tmp_path / "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a PEM file\n")
    cert, key, words = {
        "cert-not-pem": (junk, tls.key, [f"TLS certificate file {junk}", "no PEM certificate"]),
        "key-not-pem": (tls.cert, junk, [f"TLS key file {junk}", "no PEM private key"]),
        "swapped": (tls.key, tls.cert, [f"TLS certificate file {tls.key}", "no PEM certificate"]),
        "mismatch": (tls.cert, other.key, [str(tls.cert), str(other.key), "cannot be used together"]),
    }[bad]
    if not data_plane:
        ports.data = 0
    result = _server(tmp_path, ports, "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    _assert_one_error(result, *words)


# -- Redis ------------------------------------------------------------------------------------

def test_unreachable_redis_is_waited_for_without_listening(tmp_path: Path, ports: Ports) -> None:
    """Redis may start after the server (Kubernetes): one warning line per try, the URL's password
    not shown, nothing listening meanwhile, and SIGTERM ends the wait at once with status 0."""
    log = tmp_path / "server.log"
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mxfs", "server", *ports.args(), "--cache-dir",
                                 str(tmp_path / "cache"), "--metadata-backend", "redis", "--redis-url", url],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=_env())
    try:
        def retried_twice() -> bool:
            assert proc.poll() is None, log.read_text()
            return log.read_text().count("does not answer") >= 2

        wait_for(retried_twice, TIMEOUT_S, "two Redis retry lines")
        assert _free(ports.grpc) and _free(ports.data) and _free(ports.metrics), "listening without Redis"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log.read_text()
    assert "Traceback" not in text and "s3cret" not in text, text
    assert f"Redis at redis://127.0.0.1:{url.rsplit(':', 1)[1]} does not answer" in text, text
