"""Upload slots: a node serving its blocks refuses requests beyond its slots at once, as busy."""

from __future__ import annotations

import threading

import pytest

from mxfs.block_peers.client import PeerBusy, PeerClients
from mxfs.block_peers.server import PeerBlockServicer, serve
from mxfs.cache.blocks import BlockCache
from mxfs.demo import free_port
from mxfs.manifest.model import BlockKey
from tests.peers.conftest import TOKEN

BS = 64 * 1024
KEY = BlockKey("ab" * 32, BS, 0)
DATA = bytes(range(256)) * (BS // 256)


class GatedCache(BlockCache):
    """A real block cache whose reads wait until the test opens the gate (holds an upload slot)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.reading = threading.Event()

    def read(self, key, length):
        self.reading.set()
        if not self.gate.wait(20):
            raise TimeoutError("gate never opened")
        return super().read(key, length)


def test_requests_beyond_the_upload_slots_are_refused_as_busy(tmp_path):
    cache = GatedCache(tmp_path / "cache", 1 << 24)
    assert cache.put(KEY, DATA)
    port = free_port()
    server = serve("127.0.0.1", port, PeerBlockServicer(cache, TOKEN, None, upload_slots=1), workers=4)
    clients = PeerClients(TOKEN, "asker")
    try:
        first: list = []
        t = threading.Thread(target=lambda: first.append(clients.read_block(f"127.0.0.1:{port}", KEY, BS, 20)))
        t.start()
        assert cache.reading.wait(20)  # the first request holds the only slot
        with pytest.raises(PeerBusy):
            clients.read_block(f"127.0.0.1:{port}", KEY, BS, 20)
        cache.gate.set()
        t.join(20)
        assert first and bytes(first[0]) == DATA
        # the slot is free again
        assert bytes(clients.read_block(f"127.0.0.1:{port}", KEY, BS, 20)) == DATA
    finally:
        cache.gate.set()
        clients.close()
        server.stop(1).wait(5)
