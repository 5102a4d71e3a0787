"""Swarm fill: one owner per block, the peer lane's choice (rarest held first, owner-started next)."""

from __future__ import annotations

from mxfs.block_peers.fill import (
    WAIT_FOR_OWNER_S,
    SwarmFill,
    choose,
    model_order,
    server_lane_width,
    split_owned,
)
from mxfs.block_peers.registry import PeerNode
from mxfs.manifest.model import FileEntry, Manifest


def _manifest() -> Manifest:
    files = tuple(FileEntry(f"f{i}", 10 * 4096, f"{i:064x}", tuple(b"\0" * 32 for _ in range(10)))
                  for i in range(3))
    return Manifest("org/m", "0" * 40, 4096, files)


def test_model_order_lists_every_block_once_with_its_position():
    m = _manifest()
    order = model_order(m)
    assert [pos for pos, _, _ in order] == list(range(30))
    assert [(e.path, i) for _, e, i in order] == [(f"f{f}", i) for f in range(3) for i in range(10)]


def test_split_owned_gives_each_block_one_owner_in_model_order():
    m = _manifest()
    members = [PeerNode(f"n{i}", f"10.0.0.{i}:1") for i in range(3)]
    owned: dict[int, str] = {}
    for me in members:
        mine, others = split_owned(m, me, members)
        assert sorted(p for p, _, _ in mine + others) == list(range(30))
        assert [p for p, _, _ in mine] == sorted(p for p, _, _ in mine)  # model order
        assert [p for p, _, _ in others] == sorted(p for p, _, _ in others)
        for pos, _, _ in mine:
            assert pos not in owned
            owned[pos] = me.node_id
    assert len(owned) == 30 and len(set(owned.values())) == 3


def test_a_node_not_yet_listed_counts_itself_in():
    m = _manifest()
    mine, others = split_owned(m, PeerNode("solo", "x:1"), [])
    assert len(mine) == 30 and not others


def test_choose_takes_the_rarest_held_block():
    # (position, usable holders): position 3 has one holder, the others more or none
    window = [(1, 0), (2, 3), (3, 1), (4, 2)]
    assert choose("a", window, frontier=-1, waited_s=0.0) == 2


def test_choose_spreads_nodes_over_equally_rare_blocks():
    window = [(pos, 1) for pos in range(32)]
    picks = {choose(f"node{i}", window, frontier=-1, waited_s=0.0) for i in range(16)}
    assert len(picks) >= 8  # different nodes start on different blocks


def test_choose_pulls_a_block_its_owner_started_when_nothing_is_announced():
    window = [(5, 0), (9, 0)]
    assert choose("a", window, frontier=4, waited_s=0.0) is None  # the owner has not got there yet
    assert choose("a", window, frontier=5, waited_s=0.0) == 0
    assert choose("a", window, frontier=4, waited_s=WAIT_FOR_OWNER_S + 0.1) == 0  # waited long enough
    assert choose("a", [], frontier=99, waited_s=99.0) is None


def test_server_lane_follows_the_share_of_blocks_owned():
    assert server_lane_width(0, 100) == 1
    assert server_lane_width(100, 100) == 4             # a lone node: capped
    light, heavy = server_lane_width(3, 130), server_lane_width(16, 130)
    assert light == 1 and heavy == 2                     # 16 fleet-wide: the heavy owner gets more


def test_an_owned_block_is_rechecked_against_the_swarm_as_listed_now():
    m = _manifest()
    me = PeerNode("n0", "10.0.0.0:1")
    fill = SwarmFill(me)
    listed: list[PeerNode] = []
    fill._members = lambda manifest: listed  # the tier's latest listing of the swarm
    mine_alone, _ = split_owned(m, me, [])
    assert all(fill._still_mine(m, e, i) for _, e, i in mine_alone)
    listed.extend(PeerNode(f"n{k}", f"10.0.0.{k}:1") for k in range(1, 4))  # three joined after the split
    mine_now, _ = split_owned(m, me, listed)
    kept = [(e.path, i) for _, e, i in mine_alone if fill._still_mine(m, e, i)]
    assert kept == [(e.path, i) for _, e, i in mine_now]
    assert len(kept) < len(mine_alone)
