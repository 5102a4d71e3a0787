"""The peer port is this daemon's alone: one another gRPC server holds is refused, not shared."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from mxfs.block_peers.server import PeerBlockServicer, serve
from mxfs.cache.blocks import BlockCache
from mxfs.demo import free_port
from tests.peers.conftest import TOKEN


def test_a_peer_port_held_by_a_reuseport_grpc_server_is_refused(tmp_path):
    port = free_port()
    holder = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # grpc's default: SO_REUSEPORT on
    assert holder.add_insecure_port(f"127.0.0.1:{port}") == port
    holder.start()
    cache = BlockCache(tmp_path / "cache", 1 << 24)
    try:
        with pytest.raises(OSError, match=r"--peer-port"):
            serve("127.0.0.1", port, PeerBlockServicer(cache, TOKEN, None), workers=2).stop(None)
    finally:
        holder.stop(None)
        cache.close()
