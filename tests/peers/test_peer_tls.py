"""Peers over TLS: daemons with a certificate serve their peer port over TLS and verify each other."""

from __future__ import annotations

import grpc
import pytest

from mxfs.block_peers.auth import call_metadata
from mxfs.rpc import peer_pb2, peer_pb2_grpc
from tests.peers.conftest import TOKEN, node_id_of, read_all


def test_peers_exchange_blocks_over_tls(peer_cluster, origin_hashes, tmp_path):
    from tests.support.tls import make_tls

    tls = make_tls(tmp_path / "tls", names=("mxfs-peer",))
    c = peer_cluster(2, extra=["--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key),
                               "--tls-ca-file", str(tls.ca), "--tls-peer-name", "mxfs-peer"])
    assert read_all(c.model_dir(0)) == origin_hashes
    c.wait_announced({node_id_of(c.nodes[0])})
    assert read_all(c.model_dir(1)) == origin_hashes
    size = sum(f.size for f in c.manifest.files)
    assert c.tier_bytes(1, "peer") >= 0.9 * size  # the second node read from the first, over TLS
    assert "TLS" in c.nodes[0].log()

    entry = c.manifest.files[0]
    ref = peer_pb2.BlockRef(sha256=entry.sha256, block_size=c.manifest.block_size, index=0, length=1)
    with grpc.insecure_channel(f"127.0.0.1:{c.peer_ports[0]}") as ch:  # plaintext cannot talk to it
        with pytest.raises(grpc.RpcError) as err:
            list(peer_pb2_grpc.PeerBlocksStub(ch).ReadBlock(peer_pb2.PeerBlockRequest(block=ref), timeout=5,
                                                            metadata=call_metadata(TOKEN)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
