"""The HTTP data plane bounds its connections: slowloris, stalled readers, too many clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxfs.demo import wait_for
from mxfs.errors import BlockUnavailable
from mxfs.origins.local import LocalOrigin
from mxfs.rpc.http_range import HttpRangeClient
from mxfs.server.catalog import ModelCatalog
from mxfs.server.datahttp import RangeServer
from mxfs.server.metrics import ServerMetrics
from tests.conftest import BLOCK_SIZE, MODEL

SLOTS = 4
TIMEOUT_S = 3.0


@pytest.fixture
def data_plane(tmp_path: Path, models_dir: Path) -> Iterator[tuple[RangeServer, ModelCatalog]]:
    catalog = ModelCatalog([LocalOrigin(models_dir, tmp_path)], tmp_path, BLOCK_SIZE)
    server = RangeServer("127.0.0.1", 0, catalog, ServerMetrics(), 1 << 20, timeout_s=TIMEOUT_S,
                         max_connections=SLOTS)
    server.start()
    yield server, catalog
    server.stop()


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _connect(port: int, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(15)
    s.connect(("127.0.0.1", port))
    return s


def _closed_by_server(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket timeout)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_slowloris_connections_are_bounded_and_timed_out(data_plane) -> None:
    server, _ = data_plane
    port = server.server_address[1]
    before = _handler_threads()
    hung = []
    for _ in range(SLOTS * 2):  # half of them fill the slots, the rest are turned away at once
        s = _connect(port)
        s.sendall(b"GET /v1/range?model=")  # never finishes the request line
        hung.append(s)
    started = time.monotonic()
    answers = [_closed_by_server(s) for s in hung]
    assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) == SLOTS
    assert sum(a == b"" for a in answers) == SLOTS  # the stalled ones were closed after the timeout
    assert time.monotonic() - started < 5 * TIMEOUT_S
    wait_for(lambda: _handler_threads() == before, 10, "handler threads gone")
    for s in hung:
        s.close()


def test_a_client_that_stops_reading_frees_its_slot(data_plane) -> None:
    server, catalog = data_plane
    port = server.server_address[1]
    manifest = catalog.resolve(MODEL, "")
    big = max(manifest.files, key=lambda f: f.size)
    query = f"/v1/range?model={MODEL}&revision={manifest.revision}&path={big.path}&offset=0&length={big.size}"
    stalled = []
    for _ in range(SLOTS):
        s = _connect(port, rcvbuf=4096)
        s.sendall(f"GET {query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        stalled.append(s)  # and never read
    client = HttpRangeClient("127.0.0.1", port, timeout_s=5)

    def served() -> bool:
        try:
            return len(client.read_range(MODEL, manifest.revision, big.path, 0, 4096)) == 4096
        except BlockUnavailable:  # 503 while the stalled readers hold every slot
            return False

    wait_for(served, 10 * TIMEOUT_S + 10, "a slot freed by the write timeout")
    for s in stalled:
        s.close()


def test_a_tls_client_that_never_handshakes_is_timed_out(tmp_path: Path, models_dir: Path) -> None:
    """The TLS handshake runs in the connection's thread under the same timeout: a client that
    connects and sends nothing holds a slot for at most the timeout, never the accept loop."""
    import ssl

    from tests.support.tls import make_tls

    files = make_tls(tmp_path / "tls")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(files.cert, files.key)
    catalog = ModelCatalog([LocalOrigin(models_dir, tmp_path)], tmp_path, BLOCK_SIZE)
    server = RangeServer("127.0.0.1", 0, catalog, ServerMetrics(), 1 << 20, timeout_s=TIMEOUT_S,
                         max_connections=SLOTS, tls=tls)
    server.start()
    try:
        port = server.server_address[1]
        silent = _connect(port)  # TCP only, no ClientHello
        started = time.monotonic()
        manifest = catalog.resolve(MODEL, "")
        f = manifest.files[0]
        client = HttpRangeClient("127.0.0.1", port, 5, tls=ssl.create_default_context(cafile=str(files.ca)))
        assert len(client.read_range(MODEL, manifest.revision, f.path, 0, f.size)) == f.size  # not held up
        assert _closed_by_server(silent) == b""
        assert time.monotonic() - started < 3 * TIMEOUT_S
        silent.close()
    finally:
        server.stop()
