"""``grpc.health.v1`` answers SERVING for every service the server actually serves, and
NOT_FOUND for one it does not (the block-holder registry without a peer token)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxfs.config import ServerConfig
from mxfs.demo import free_port
from mxfs.server.app import Server

HOLDERS = "mxfs.v1.BlockHolders"


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def run(**cfg: object) -> Server:
        config = ServerConfig(host="127.0.0.1", port=free_port(), metrics_port=0, data_port=0,
                              cache_dir=str(tmp_path / f"server-{len(servers)}"), **cfg)
        config.validate()
        server = Server(config)
        server.start()
        servers.append(server)
        return server

    yield run
    for s in servers:
        s.stop(0)


def _served(server: Server) -> set[str]:
    """Every service name with handlers on the gRPC server (grpc internals: test-only)."""
    handlers = server.grpc_server._state.generic_handlers
    return {h.service_name() for h in handlers if hasattr(h, "service_name")} - {"grpc.health.v1.Health"}


def _status(server: Server, service: str) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_every_served_service_reports_serving(start) -> None:
    server = start(peer_token="holders-token")
    served = _served(server)
    assert HOLDERS in served and len(served) >= 6
    for name in sorted(served):
        assert _status(server, name) == "SERVING", name
    assert _status(server, "") == "SERVING"
    assert _status(server, "no.such.Service") == "NOT_FOUND"


def test_the_holder_registry_is_not_reported_when_it_is_off(start) -> None:
    server = start()
    assert HOLDERS not in _served(server)
    assert _status(server, HOLDERS) == "NOT_FOUND"
    assert _status(server, "model_express.p2p.P2pService") == "SERVING"
