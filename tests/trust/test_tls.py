"""TLS end to end: a server on grpcs, a daemon mounting through it with a CA and the token."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxfs.errors import BlockUnavailable
from mxfs.rpc.channel import ChannelSecurity, set_default_security
from mxfs.rpc.client import MxfsClient
from tests.conftest import MODEL, sha256_file
from tests.support.cluster import ServerProc

TOKEN = "tls-test-token"


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, p = local.rpartition(":")
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


@pytest.fixture
def tls(tmp_path: Path) -> Iterator:
    from tests.support.tls import make_tls

    files = make_tls(tmp_path / "tls")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    set_default_security(ChannelSecurity(TOKEN, str(files.ca)))  # this process's health checks
    yield files, token
    set_default_security(None)


def test_daemon_mounts_through_a_tls_server(tls, start_server, start_mount, models_dir: Path) -> None:
    files, token = tls
    from mxfs.demo import free_port

    server: ServerProc = start_server(
        scheme="https://",
        extra=["--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key),
               "--auth-token-file", str(token), "--auth-reads"])
    metrics_port = free_port()
    daemon = start_mount(server, extra=["--tls-ca-file", str(files.ca), "--auth-token-file", str(token),
                                        "--metrics-port", str(metrics_port)])
    shard = sorted((models_dir / MODEL).glob("*.safetensors"))[0]
    assert sha256_file(daemon.mountpoint / MODEL / shard.name) == sha256_file(shard)
    assert "TLS" in server.log() and f"data {server.data_port} https + token" in server.log()
    # the blocks went over the HTTPS data plane, none over gRPC ReadRange
    assert server.metric("mxfs_server_requests_total", method="HttpRange") > 0
    assert server.metric("mxfs_server_requests_total", method="ReadRange") == 0
    # the daemon's metrics listen on loopback only by default
    assert _listening(metrics_port) == {"0100007F"}
    # node control: a socket only root can open, bound where no one else could reach it first
    control = Path(os.getxattr(daemon.mountpoint, "user.mxfs.control").decode())
    assert stat.S_IMODE(control.stat().st_mode) == 0o600 and stat.S_ISSOCK(control.stat().st_mode)
    assert not [p for p in control.parent.iterdir() if p.name.startswith(".c")]

    port = server.port
    ok = MxfsClient(f"grpcs://127.0.0.1:{port}", security=ChannelSecurity(TOKEN, str(files.ca)))
    assert ok.get_manifest(MODEL).files
    for address, security in (
        (f"127.0.0.1:{port}", ChannelSecurity(TOKEN)),  # plaintext against a TLS port
        (f"https://127.0.0.1:{port}", ChannelSecurity(TOKEN)),  # TLS, but not trusting the test CA
        (f"https://127.0.0.1:{port}", ChannelSecurity("", str(files.ca))),  # TLS, no token (reads need it)
    ):
        client = MxfsClient(address, timeout_s=5, security=security)
        with pytest.raises(BlockUnavailable):
            client.get_manifest(MODEL)
        client.close()
    ok.close()
