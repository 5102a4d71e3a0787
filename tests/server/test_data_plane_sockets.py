"""The HTTP data plane's connections: small replies are not held back by Nagle's algorithm."""

from __future__ import annotations

import socket
from pathlib import Path

from mxfs.origins.local import LocalOrigin
from mxfs.rpc.http_range import HttpRangeClient
from mxfs.server.catalog import ModelCatalog
from mxfs.server.datahttp import RangeServer
from mxfs.server.metrics import ServerMetrics
from tests.conftest import BLOCK_SIZE, MODEL


def test_accepted_connections_send_without_waiting_for_acks(tmp_path: Path, models_dir: Path) -> None:
    """Headers and body go out in separate writes; with Nagle on, a body smaller than a
    segment waited for the client's delayed ACK of the headers (40 ms per small file)."""
    catalog = ModelCatalog([LocalOrigin(models_dir, tmp_path)], tmp_path, BLOCK_SIZE)
    server = RangeServer("127.0.0.1", 0, catalog, ServerMetrics(), 1 << 20)
    accepted: list[socket.socket] = []
    serve = server.process_request

    def recording(request: socket.socket, client_address: object) -> None:
        accepted.append(request)
        serve(request, client_address)

    server.process_request = recording  # type: ignore[method-assign]
    server.start()
    try:
        manifest = catalog.resolve(MODEL, "")
        small = min(manifest.files, key=lambda f: f.size)
        client = HttpRangeClient("127.0.0.1", server.server_address[1], 5)
        assert len(client.read_range(MODEL, manifest.revision, small.path, 0, small.size)) == small.size
        assert len(accepted) == 1
        assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.stop()
