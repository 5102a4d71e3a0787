"""The cluster token guards peers and the registry; peers serve only cached blocks."""

from __future__ import annotations

import grpc
import pytest

from mxfs.block_peers.auth import call_metadata
from mxfs.block_peers.registry import HolderRegistryClient
from mxfs.rpc import peer_pb2, peer_pb2_grpc
from tests.peers.conftest import TOKEN, node_id_of, read_all


def _read(port: int, ref: peer_pb2.BlockRef, metadata=()) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = peer_pb2_grpc.PeerBlocksStub(ch)
        chunks = stub.ReadBlock(peer_pb2.PeerBlockRequest(block=ref), timeout=10, metadata=metadata)
        return b"".join(c.data for c in chunks)


def test_requests_without_the_token_are_refused(peer_cluster, origin_hashes):
    c = peer_cluster(4)
    assert read_all(c.model_dir(0)) == origin_hashes
    c.wait_announced({node_id_of(c.nodes[0])})
    entry = c.manifest.file(sorted(p for p in origin_hashes if p.endswith(".safetensors"))[0])
    bs = c.manifest.block_size
    ref = peer_pb2.BlockRef(sha256=entry.sha256, block_size=bs, index=0, length=bs)
    port = c.peer_ports[0]

    assert len(_read(port, ref, call_metadata(TOKEN))) == bs  # the right token works
    for metadata in ((), call_metadata("wrong-token"), call_metadata("")):
        with pytest.raises(grpc.RpcError) as err:
            _read(port, ref, metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # the registry on the server is guarded by the same token
    intruder = HolderRegistryClient(c.server.address, "wrong-token")
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        intruder.nodes()
    intruder.close()
    assert len(c.registry.nodes()) == 4


def test_peers_serve_only_cached_blocks(peer_cluster, origin_hashes):
    c = peer_cluster(4)
    entry = c.manifest.files[0]
    bs = c.manifest.block_size
    port, md = c.peer_ports[1], call_metadata(TOKEN)
    cases = {
        grpc.StatusCode.NOT_FOUND: peer_pb2.BlockRef(sha256=entry.sha256, block_size=bs, index=0, length=10),
        grpc.StatusCode.INVALID_ARGUMENT: peer_pb2.BlockRef(sha256="../../../etc/passwd", block_size=bs,
                                                            index=0, length=10),
    }
    for code, ref in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            _read(port, ref, md)
        assert err.value.code() == code
    with pytest.raises(grpc.RpcError) as err:  # longer than a block
        _read(port, peer_pb2.BlockRef(sha256=entry.sha256, block_size=bs, index=0, length=bs + 1), md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
