"""Swarm fill order: every block once, each node starting at its own share of the model."""

from __future__ import annotations

from mxfs.block_peers.fill import fill_order, split_owned
from mxfs.block_peers.registry import PeerNode
from mxfs.manifest.model import FileEntry, Manifest


def _manifest() -> Manifest:
    files = tuple(FileEntry(f"f{i}", 10 * 4096, f"{i:064x}", tuple(b"\0" * 32 for _ in range(10)))
                  for i in range(3))
    return Manifest("org/m", "0" * 40, 4096, files)


def test_fill_order_is_a_rotation_starting_at_each_nodes_share():
    m = _manifest()
    members = [PeerNode(f"n{i}", f"10.0.0.{i}:1") for i in range(3)]
    orders = {n.node_id: [(e.path, i) for e, i in fill_order(m, n.node_id, members)] for n in members}
    every = [(e.path, i) for e in m.files for i in range(10)]
    for order in orders.values():
        assert sorted(order) == sorted(every)  # each block exactly once
    assert [o[0] for o in orders.values()] == [("f0", 0), ("f1", 0), ("f2", 0)]  # 30 blocks / 3 nodes


def test_fill_order_of_a_node_not_yet_listed_counts_it_in():
    m = _manifest()
    order = fill_order(m, "zz", [PeerNode("a", "x:1")])
    assert order[0] == (m.files[1], 5)  # rank 1 of 2: halfway
    assert fill_order(m, "solo", [])[0] == (m.files[0], 0)


def test_split_owned_gives_each_block_one_owner_and_keeps_the_peer_order():
    m = _manifest()
    members = [PeerNode(f"n{i}", f"10.0.0.{i}:1") for i in range(3)]
    owned = {}
    for me in members:
        order = fill_order(m, me.node_id, members)
        mine, others = split_owned(m, me, members, order)
        assert sorted(mine + others, key=lambda b: (b[0].path, b[1])) == sorted(order, key=lambda b: (b[0].path, b[1]))
        assert others == [b for b in order if b not in mine]  # rotation kept for the peer lane
        for e, i in mine:
            assert (e.path, i) not in owned
            owned[(e.path, i)] = me.node_id
    assert len(owned) == 30  # every block owned by exactly one member
    assert len(set(owned.values())) == 3
