"""The server over real sockets: gRPC manifests and ranges, the HTTP data plane, health."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
import pytest

from mxfs.errors import InvalidModelName, ModelNotFound
from mxfs.manifest.hashing import block_digest
from mxfs.rpc import model_express_health_pb2, model_express_health_pb2_grpc, mxfs_pb2, mxfs_pb2_grpc
from mxfs.rpc.client import MxfsClient
from mxfs.rpc.fastchunk import decode_chunk, encode_chunk
from mxfs.rpc.http_range import HttpRangeClient
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    from tests.support.cluster import ServerProc

    proc = ServerProc(models_dir, tmp_path_factory.mktemp("srv") / "cache").start()
    yield proc
    proc.stop()


def test_fast_chunk_codec_is_wire_compatible():
    for offset, data in ((0, b""), (5, b"abc"), (1 << 40, bytes(range(256)) * 300)):
        raw = encode_chunk((offset, data))
        pb = mxfs_pb2.Chunk.FromString(raw)
        assert (pb.offset, pb.data) == (offset, data)
        got_offset, view = decode_chunk(pb.SerializeToString())
        assert (got_offset, bytes(view)) == (offset, data)
    with pytest.raises(ValueError):
        decode_chunk(b"\x12\x10abc")


def test_manifest_and_grpc_range_match_origin(server, models_dir):
    client = MxfsClient(server.address)
    m = client.get_manifest(MODEL)
    assert len(m.revision) == 40 and m.block_size == 256 * 1024
    f = next(f for f in m.files if f.path.endswith(".safetensors"))
    data = (models_dir / MODEL / f.path).read_bytes()
    got = client.read_range(m.name, m.revision, f.path, 1000, 700_000)
    assert bytes(got) == data[1000:701_000]
    assert m.block_hash == "blake3" and block_digest(m.block_hash, data[: m.block_size]) == f.block_hashes[0]
    assert client.get_manifest(MODEL, m.revision) == m
    with pytest.raises(ModelNotFound):
        client.get_manifest(MODEL, "f" * 40)
    with pytest.raises(InvalidModelName):
        client.get_manifest("../../etc")
    with pytest.raises(InvalidModelName):
        client.read_range(m.name, m.revision, "../../../etc/passwd", 0, 10)
    with pytest.raises(InvalidModelName):
        client.read_range(m.name, m.revision, f.path, f.size - 1, 10)


def test_http_data_plane(server, models_dir):
    client = MxfsClient(server.address)
    m = client.get_manifest(MODEL)
    port = client.data_port()
    assert port == server.data_port
    http = HttpRangeClient("127.0.0.1", port, 5)
    f = max(m.files, key=lambda f: f.size)
    data = (models_dir / MODEL / f.path).read_bytes()
    for offset, length in ((0, 8), (m.block_size, m.block_size), (f.size - 10, 10)):
        assert bytes(http.read_range(m.name, m.revision, f.path, offset, length)) == data[offset : offset + length]
    with pytest.raises(InvalidModelName):
        http.read_range(m.name, m.revision, "../secret", 0, 1)
    with pytest.raises(InvalidModelName):
        http.read_range(m.name, m.revision, f.path, f.size, 1)
    with pytest.raises(ModelNotFound):
        http.read_range("nobody/none", "a" * 40, "x", 0, 1)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/etc/passwd", timeout=5)
    assert info.value.code == 404


def test_health_services(server):
    channel = grpc.insecure_channel(server.address)
    reply = model_express_health_pb2_grpc.HealthServiceStub(channel).GetHealth(
        model_express_health_pb2.HealthRequest(), timeout=5)
    assert reply.status == "ok" and reply.version
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    std = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert std.status == health_pb2.HealthCheckResponse.SERVING
    listing = mxfs_pb2_grpc.MxfsServiceStub(channel).ListModels(mxfs_pb2.ListModelsRequest(), timeout=5)
    names = [m.name for m in listing.models]
    assert MODEL in names
    assert server.metric("mxfs_server_requests_total") > 0
