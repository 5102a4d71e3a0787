"""A node that leaves disappears from the registry: at once when it withdraws, by TTL when it dies."""

from __future__ import annotations

import time

from mxfs.demo import wait_for
from tests.peers.conftest import node_id_of, peer_flags, read_all


def test_departed_nodes_disappear_from_the_registry(peer_cluster, origin_hashes):
    c = peer_cluster(4, holder_ttl=3)
    ids = [node_id_of(n) for n in c.nodes]
    assert {n.node_id for n in c.registry.nodes()} == set(ids)
    assert read_all(c.model_dir(0)) == origin_hashes
    assert read_all(c.model_dir(1)) == origin_hashes
    c.wait_announced({ids[0], ids[1]})

    # clean shutdown: withdrawn immediately, its holdings with it
    c.nodes[1].stop()
    live = {n.node_id for n in c.registry.nodes()}
    assert ids[1] not in live and ids[0] in live
    path = c.manifest.files[0].path
    assert ids[1] not in c.holders(path)

    # crash: no withdraw, the heartbeat stops and the TTL removes it
    c.nodes[0].stop(kill=True)
    killed_at = time.monotonic()
    assert ids[0] in c.holders(path)
    wait_for(lambda: ids[0] not in {n.node_id for n in c.registry.nodes()}, 15, "TTL expiry")
    assert time.monotonic() - killed_at <= 3 + 4  # TTL + lookup cache + polling, on a busy machine
    assert ids[0] not in c.holders(path)
    # the live nodes keep their heartbeat well past the TTL
    past_ttl = time.monotonic() + 4
    while time.monotonic() < past_ttl:
        assert {n.node_id for n in c.registry.nodes()} == {ids[2], ids[3]}
        time.sleep(0.2)


def test_restarted_node_reannounces_its_cache(peer_cluster, start_mount, origin_hashes):
    c = peer_cluster(1)
    nid = node_id_of(c.nodes[0])
    assert read_all(c.model_dir(0)) == origin_hashes
    c.wait_announced({nid})
    c.nodes[0].stop()
    assert nid not in {n.node_id for n in c.registry.nodes()}
    again = start_mount(c.server, name="node1", extra=peer_flags(c.peer_ports[0]))
    assert node_id_of(again) == nid  # same cache, same identity
    c.wait_announced({nid})  # everything it still holds is announced without reading
