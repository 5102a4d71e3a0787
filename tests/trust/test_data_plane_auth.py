"""The HTTP data plane under TLS and ``--auth-reads``: HTTPS with the gRPC certificate, the
cluster token on every request, and nodes that use it instead of falling back to gRPC."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxfs.errors import BlockUnavailable
from mxfs.fetch.server import ServerTier
from mxfs.rpc.channel import ChannelSecurity, set_default_security
from mxfs.rpc.client import MxfsClient
from mxfs.rpc.http_range import HttpRangeClient, tls_client_context
from tests.conftest import MODEL
from tests.support.cluster import ServerProc
from tests.support.tls import TlsFiles, make_tls

TOKEN = "data-plane-token"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[TlsFiles]:
    files = make_tls(tmp_path / "tls")
    set_default_security(ChannelSecurity(TOKEN, str(files.ca)))  # this process's health checks
    yield files
    set_default_security(None)


def _status(conn: http.client.HTTPConnection, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("GET", url, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read(4096)


def _range_url(client: MxfsClient) -> tuple[str, bytes, int]:
    """A data-plane URL of one block, its expected bytes' length and the block size."""
    m = client.get_manifest(MODEL)
    f = max(m.files, key=lambda f: f.size)
    return (f"/v1/range?model={m.name}&revision={m.revision}&path={f.path}&offset=0&length={m.block_size}",
            f.path.encode(), m.block_size)


def _refusals(conn_factory, url: str, block_size: int) -> None:
    """No token: 401 with a clear body; wrong token: 403; nothing served either way; right token: 200."""
    status, body = _status(conn_factory(), url, {})
    assert status == 401 and b"needs the cluster token" in body and len(body) < 200
    status, body = _status(conn_factory(), url, {"Authorization": "Bearer not-the-token"})
    assert status == 403 and b"wrong cluster token" in body and len(body) < 200
    status, body = _status(conn_factory(), url, {"Authorization": "Basic " + TOKEN})  # not a bearer token
    assert status == 401
    conn = conn_factory()
    conn.request("GET", url, headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200 and len(resp.read()) == block_size


def test_https_data_plane_needs_the_token_and_the_ca(tls_files: TlsFiles, token_file: Path, start_server,
                                                     models_dir: Path) -> None:
    server: ServerProc = start_server(
        scheme="https://",
        extra=["--tls-cert-file", str(tls_files.cert), "--tls-key-file", str(tls_files.key),
               "--auth-token-file", str(token_file), "--auth-reads"])
    client = MxfsClient(server.address, security=ChannelSecurity(TOKEN, str(tls_files.ca)))
    try:
        assert client.data_port() == server.data_port  # advertised as before, now with TLS
        url, _, block_size = _range_url(client)
        m = client.get_manifest(MODEL)
    finally:
        client.close()
    trusted = tls_client_context(str(tls_files.ca))
    _refusals(lambda: http.client.HTTPSConnection("127.0.0.1", server.data_port, timeout=10, context=trusted),
              url, block_size)
    assert server.metric("mxfs_server_errors_total", method="HttpRange", code="401") == 2
    assert server.metric("mxfs_server_errors_total", method="HttpRange", code="403") == 1

    # plain HTTP against the HTTPS port gets no answer; a client that does not trust the CA stops at the handshake
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        _status(http.client.HTTPConnection("127.0.0.1", server.data_port, timeout=10), url,
                {"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(ssl.SSLCertVerificationError):
        _status(http.client.HTTPSConnection("127.0.0.1", server.data_port, timeout=10,
                                            context=ssl.create_default_context()), url, {})
    # the node's client: right bytes with token + CA, a clear error without
    f = max(m.files, key=lambda f: f.size)
    want = (models_dir / MODEL / f.path).read_bytes()[m.block_size: 3 * m.block_size]
    good = HttpRangeClient("127.0.0.1", server.data_port, 10, tls=trusted, token=TOKEN)
    assert bytes(good.read_range(m.name, m.revision, f.path, m.block_size, 2 * m.block_size)) == want
    with pytest.raises(BlockUnavailable, match="401"):
        HttpRangeClient("127.0.0.1", server.data_port, 10, tls=trusted).read_range(
            m.name, m.revision, f.path, 0, 10)
    with pytest.raises(BlockUnavailable, match="certificate verify failed"):
        HttpRangeClient("127.0.0.1", server.data_port, 10, tls=tls_client_context(), token=TOKEN).read_range(
            m.name, m.revision, f.path, 0, 10)
    assert f"data {server.data_port} https + token" in server.log()


def test_plain_data_plane_with_auth_reads(token_file: Path, start_server, models_dir: Path) -> None:
    """``--auth-reads`` without TLS: the plain data plane stays on and checks the token; the node's
    server tier sends it and its blocks go over HTTP, not gRPC ``ReadRange``."""
    import trio

    server: ServerProc = start_server(extra=["--auth-token-file", str(token_file), "--auth-reads"])
    client = MxfsClient(server.address, security=ChannelSecurity(TOKEN))
    try:
        url, _, block_size = _range_url(client)
        _refusals(lambda: http.client.HTTPConnection("127.0.0.1", server.data_port, timeout=10), url, block_size)

        m = client.get_manifest(MODEL)
        f = max(m.files, key=lambda f: f.size)
        tier = ServerTier(client, trio.CapacityLimiter(2), timeout_s=10)
        got = trio.run(tier.fetch, m, f, 1)
        assert bytes(got) == (models_dir / MODEL / f.path).read_bytes()[m.block_size: 2 * m.block_size]
        assert tier._http is not None and tier._http.url == f"http://127.0.0.1:{server.data_port}"
    finally:
        client.close()
    assert server.metric("mxfs_server_requests_total", method="HttpRange") == 5  # 4 above + the tier's
    assert server.metric("mxfs_server_requests_total", method="ReadRange") == 0
