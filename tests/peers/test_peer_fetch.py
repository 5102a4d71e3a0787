"""One server, >= 4 real daemons on 127.0.0.1: reads are served by peers, not the server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from mxfs.demo import free_port
from mxfs.nodectl import status
from tests.conftest import MODEL
from tests.peers.conftest import node_id_of, peer_flags, read_all


def test_second_readers_get_blocks_from_peers(peer_cluster, origin_hashes):
    c = peer_cluster(4)
    size = c.manifest.total_size
    assert read_all(c.model_dir(0)) == origin_hashes
    assert c.tier_bytes(0, "server") == size
    c.wait_announced({node_id_of(c.nodes[0])})

    before = c.egress()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(read_all, [c.model_dir(i) for i in (1, 2, 3)]))
    assert all(r == origin_hashes for r in results)
    # node 1 holds every block: the server sends (almost) nothing more
    assert c.egress() - before <= 0.02 * size
    for i in (1, 2, 3):
        assert c.tier_bytes(i, "peer") >= 0.98 * size
        assert c.tier_bytes(i, "server") <= 0.02 * size
    # and the status of a reader names where the bytes came from
    lines = list(c.status(1).peers)
    assert lines[0].startswith("self ") and "connected" in lines[0]
    assert any("bytes" in line for line in lines[1:])


def test_cold_fleet_swarm_costs_about_one_copy(peer_cluster, origin_hashes):
    c = peer_cluster(4)
    size = c.manifest.total_size
    before = c.egress()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read_all, [c.model_dir(i) for i in range(4)]))
    assert all(r == origin_hashes for r in results)
    egress = c.egress() - before
    assert egress <= 1.2 * size, f"server sent {egress / size:.2f} copies"
    # the work was spread: more than one node fetched from the server
    fetchers = [i for i in range(4) if c.tier_bytes(i, "server") > 0]
    assert len(fetchers) >= 2
    assert sum(c.tier_bytes(i, "peer") for i in range(4)) >= 2 * size


def test_peer_daemon_reads_without_a_registry(start_server, start_mount, monkeypatch, origin_hashes):
    monkeypatch.delenv("MXFS_PEER_TOKEN", raising=False)
    server = start_server()  # no token: the server runs no holder registry
    node = start_mount(server, name="lonely", extra=peer_flags(free_port()))
    assert read_all(node.mountpoint / MODEL) == origin_hashes
    assert "registry unreachable" in status(node.mountpoint).peers[0]
    assert node.log().count("cannot announce to the holder registry") == 1
