"""The cluster token: mutating RPCs need it, read-only ModelExpress calls stay open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mxfs.config import ServerConfig
from mxfs.demo import free_port
from mxfs.rpc import model_express_health_pb2 as health_pb2
from mxfs.rpc import model_express_health_pb2_grpc as health_grpc
from mxfs.rpc import model_express_model_pb2 as me_pb2
from mxfs.rpc import model_express_model_pb2_grpc as me_grpc
from mxfs.rpc import model_express_p2p_pb2 as p2p_pb2
from mxfs.rpc import model_express_p2p_pb2_grpc as p2p_pb2_grpc
from mxfs.rpc import mxfs_pb2, mxfs_pb2_grpc, peer_pb2, peer_pb2_grpc
from mxfs.rpc.auth import MUTATING_METHODS
from mxfs.rpc.channel import ChannelSecurity, open_channel
from mxfs.server.app import Server
from mxfs.weight_sources import convert
from mxfs.weight_sources.model import SourceIdentity, Status
from tests.conftest import BLOCK_SIZE, MODEL

TOKEN = "s3cret-cluster-token"
IDENT = SourceIdentity(MODEL, "a" * 40, "bfloat16", tp_size=1, rank=0, backend_version="0.0")


@pytest.fixture
def secured(tmp_path: Path, models_dir: Path) -> Iterator:
    servers = []

    def start(**cfg: object) -> str:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        config = ServerConfig(host="127.0.0.1", port=free_port(), metrics_port=0, data_port=0,
                              cache_dir=str(tmp_path / f"server-{len(servers)}"), models_dir=str(models_dir),
                              block_size=BLOCK_SIZE, auth_token_file=str(token_file), **cfg)
        config.validate()
        server = Server(config)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for s in servers:
        s.stop(0)


def _code(call) -> grpc.StatusCode | None:
    try:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return None


def _publish(channel: grpc.Channel, source_id: str) -> None:
    req = p2p_pb2.PublishMetadataRequest(
        identity=convert.identity_to_pb(IDENT), worker_id=source_id,
        worker=convert.worker_to_pb(IDENT, "a", b"m", [], Status.READY, "h"))
    assert p2p_pb2_grpc.P2pServiceStub(channel).PublishMetadata(req, timeout=10).success


def _announce(channel: grpc.Channel) -> None:
    req = peer_pb2.AnnounceRequest(node=peer_pb2.PeerNode(node_id="n1", address="127.0.0.1:1"))
    peer_pb2_grpc.BlockHoldersStub(channel).Announce(req, timeout=10)


def test_mutating_calls_without_the_token_are_refused(secured) -> None:
    address = secured()
    anon = open_channel(address, ChannelSecurity())
    wrong = open_channel(address, ChannelSecurity(token="wrong"))
    authed = open_channel(address, ChannelSecurity(token=TOKEN))
    models = me_grpc.ModelServiceStub(anon)
    delete = me_pb2.DeleteModelRequest(model_name=MODEL)
    ensure = me_pb2.ModelDownloadRequest(model_name=MODEL)
    unauth = grpc.StatusCode.UNAUTHENTICATED
    for channel in (anon, wrong):
        assert _code(lambda c=channel: _publish(c, "src-1")) == unauth
        assert _code(lambda c=channel: _announce(c)) == unauth
        assert _code(lambda c=channel: me_grpc.ModelServiceStub(c).DeleteModel(delete, timeout=10)) == unauth
        assert _code(lambda c=channel: me_grpc.ModelServiceStub(c).EnsureModelDownloaded(ensure, timeout=10)) == unauth
    # nothing was published by the refused calls
    ls = p2p_pb2.ListSourcesRequest(identity=convert.identity_to_pb(IDENT))
    assert not p2p_pb2_grpc.P2pServiceStub(anon).ListSources(ls, timeout=10).instances
    # the same calls with the token go through
    assert _code(lambda: _publish(authed, "src-2")) is None
    assert _code(lambda: _announce(authed)) is None
    assert [s.worker_id for s in p2p_pb2_grpc.P2pServiceStub(anon).ListSources(ls, timeout=10).instances] == \
        ["src-2"]
    # read-only calls of an unmodified client (no token, plain stubs) keep working
    plain = grpc.insecure_channel(address)
    assert mxfs_pb2_grpc.MxfsServiceStub(plain).GetManifest(mxfs_pb2.ModelRequest(name=MODEL), timeout=30).files
    files = models.ListModelFiles(me_pb2.ModelFilesRequest(model_name=MODEL), timeout=30)
    assert files.files
    assert health_grpc.HealthServiceStub(plain).GetHealth(health_pb2.HealthRequest(), timeout=10).status
    for c in (anon, wrong, authed, plain):
        c.close()


def test_operator_can_require_the_token_for_reads(secured) -> None:
    address = secured(auth_reads=True)
    anon = grpc.insecure_channel(address)
    authed = open_channel(address, ChannelSecurity(token=TOKEN))
    req = mxfs_pb2.ModelRequest(name=MODEL)
    assert _code(lambda: mxfs_pb2_grpc.MxfsServiceStub(anon).GetManifest(req, timeout=30)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert mxfs_pb2_grpc.MxfsServiceStub(authed).GetManifest(req, timeout=30).files
    assert health_grpc.HealthServiceStub(anon).GetHealth(health_pb2.HealthRequest(), timeout=10).status  # probes
    anon.close()
    authed.close()


def test_every_listed_mxfs_method_exists() -> None:
    """A typo in the list would silently leave a method open."""
    from google.protobuf import descriptor_pool

    from mxfs.rpc import node_pb2  # noqa: F401  (registers the NodeControl service)

    pool = descriptor_pool.Default()
    for full in MUTATING_METHODS:
        service, method = full.strip("/").split("/")
        assert pool.FindServiceByName(service).FindMethodByName(method) is not None, full
