"""Unit tests of the peer-cache pieces: bitmaps, the registry logic, spreading, hedging."""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter

import pytest
import trio

from mxfs.block_peers.bitmap import MAX_BITMAP_BYTES, BitmapError, BlockSet
from mxfs.block_peers.holdings import Holdings
from mxfs.block_peers.registry import PeerNode
from mxfs.block_peers.swarm import owner, rank_holders
from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks
from mxfs.demo import wait_for
from mxfs.errors import BlockUnavailable
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.stats import FetchStats
from mxfs.manifest.model import BlockKey, FileEntry, Manifest
from mxfs.server.holders import HolderRegistry

SHA = "ab" * 32


def test_blockset_roundtrip_and_bounds():
    s = BlockSet.of([0, 3, 9, 4095])
    back = BlockSet.decode(s.encode())
    assert list(back) == [0, 3, 9, 4095] and len(back) == 4
    assert 3 in back and 4 not in back and -1 not in back and 10**9 not in back
    assert BlockSet.decode(b"") .encode() == b""
    full = BlockSet.of(range(35_000))  # a 140 GB file in 4 MiB blocks: a tiny record
    assert len(full.encode()) < 100
    with pytest.raises(BitmapError):
        BlockSet.decode(b"not zlib")
    with pytest.raises(BitmapError):
        BlockSet.decode(zlib.compress(b"\xff" * (MAX_BITMAP_BYTES + 1)))


def test_holdings_batches_only_changed_files():
    h = Holdings()
    a, b = BlockKey(SHA, 1024, 0), BlockKey("cd" * 32, 1024, 5)
    h.changed([a, b, a._replace(index=1)], [])
    files = {f.sha256: list(f.blocks) for f in h.take_dirty()}
    assert files == {SHA: [0, 1], "cd" * 32: [5]}
    assert h.take_dirty() == [] and not h.pending()
    h.changed([], [b])
    (only,) = h.take_dirty()
    assert only.sha256 == "cd" * 32 and len(only.blocks) == 0  # an empty set withdraws the file


def test_registry_announce_lookup_withdraw_and_ttl(store):
    reg = HolderRegistry(store, ttl_s=1.0)
    bm = BlockSet.of([0, 1, 2]).encode()
    reg.announce("n1", "127.0.0.1:1", [(SHA, 1024, bm)], ["org/m@" + "0" * 40], [])
    reg.announce("n2", "127.0.0.1:2", [(SHA, 1024, BlockSet.of([7]).encode())], ["org/m@" + "0" * 40], [])
    got = {n: list(BlockSet.decode(b)) for n, _, b in reg.holders(SHA, 1024)}
    assert got == {"n1": [0, 1, 2], "n2": [7]}
    assert [n for n, _ in reg.swarm("org/m@" + "0" * 40)] == ["n1", "n2"]
    reg.withdraw("n2")
    assert [n for n, _, _ in reg.holders(SHA, 1024)] == ["n1"]
    assert [n for n, _ in reg.swarm("org/m@" + "0" * 40)] == ["n1"]
    # n1 stops heartbeating: gone from every answer
    wait_for(lambda: reg.holders(SHA, 1024) == [] and reg.live_nodes() == {}, 10, "n1's heartbeat to expire")
    with pytest.raises(ValueError):
        reg.announce("bad id!", "x:1", [], [], [])
    with pytest.raises(ValueError):
        reg.holders("../etc", 1024)


def test_swarm_owner_spreads_blocks_and_is_agreed():
    nodes = [PeerNode(f"node-{i}", f"127.0.0.1:{i}") for i in range(8)]
    keys = [BlockKey(SHA, 4 << 20, i) for i in range(800)]
    owners = Counter(owner(k, nodes).node_id for k in keys)
    assert len(owners) == 8 and min(owners.values()) > 60  # ~100 each
    shuffled = list(reversed(nodes))
    assert all(owner(k, nodes) == owner(k, shuffled) for k in keys)  # order-independent
    # a new member takes over only ~1/9 of the blocks
    moved = sum(owner(k, nodes) != owner(k, [*nodes, PeerNode("new", "x:1")]) for k in keys)
    assert moved < 800 / 9 * 1.6


def test_rank_holders_spreads_requesters_and_prefers_idle():
    holders = [PeerNode(f"h{i}", f"127.0.0.1:{i}") for i in range(4)]
    key = BlockKey(SHA, 4 << 20, 3)
    firsts = Counter(rank_holders(key, f"req-{r}", holders, lambda n: 0)[0].node_id for r in range(200))
    assert len(firsts) == 4 and max(firsts.values()) < 100  # not everyone asks the same peer
    top = rank_holders(key, "req-0", holders, lambda n: 0)
    busy = {top[0].node_id: 5}
    assert rank_holders(key, "req-0", holders, lambda n: busy.get(n, 0))[0] == top[1]


# -- the chain: hedging and verification with in-process tiers -----------------------------

DATA = bytes(range(256)) * 16  # one 4 KiB block


def _manifest() -> tuple[Manifest, FileEntry]:
    entry = FileEntry("f.bin", len(DATA), hashlib.sha256(DATA).hexdigest(), (hashlib.sha256(DATA).digest(),))
    return Manifest("org/m", "0" * 40, 4096, (entry,)), entry


class FakeTier:
    def __init__(self, name: str, delay: float, data: bytes | None, hedge: float | None = None,
                 verifies: bool = False) -> None:
        self.name, self.delay, self.data, self.calls = name, delay, data, 0
        self.verifies = verifies
        if hedge is not None:
            self.hedge_after = lambda: hedge
        self.quarantined = 0

    async def fetch(self, manifest, entry, index):
        self.calls += 1
        await trio.sleep(self.delay)
        if self.data is None:
            raise BlockUnavailable(f"{self.name}: no")
        return self.data

    def quarantine(self, manifest, entry, index):
        self.quarantined += 1


def _chain(tmp_path, tiers) -> FetchChain:
    return FetchChain(BlockCache(tmp_path / "c", 1 << 20), tiers, FetchStats(), HotBlocks(1 << 20),
                      trio.CapacityLimiter(2), timeout_s=5.0)


def test_slow_tier_is_hedged_to_the_next(tmp_path):
    slow = FakeTier("peer", 3.0, DATA, hedge=0.1)
    server = FakeTier("server", 0.05, DATA)
    chain = _chain(tmp_path, [slow, server])
    m, e = _manifest()

    async def main():
        start = trio.current_time()
        assert await chain.block(m, e, 0) == DATA
        return trio.current_time() - start

    assert trio.run(main) < 1.0
    assert slow.calls == 1 and server.calls == 1
    assert chain.stats.snapshot()["bytes"] == {"server": len(DATA)}


def test_fast_tier_wins_without_hedge_and_failures_fall_through(tmp_path):
    peer = FakeTier("peer", 0.01, DATA, hedge=1.0)
    server = FakeTier("server", 0.01, DATA)
    m, e = _manifest()
    chain = _chain(tmp_path, [peer, server])
    assert trio.run(chain.block, m, e, 0) == DATA
    assert (peer.calls, server.calls) == (1, 0)

    missing = FakeTier("peer", 0.0, None, hedge=10.0)
    liar = FakeTier("liar", 0.0, b"x" * len(DATA))
    server = FakeTier("server", 0.0, DATA)
    chain = _chain(tmp_path / "2", [missing, liar, server])
    assert trio.run(chain.block, m, e, 0) == DATA
    assert liar.quarantined == 1 and server.calls == 1
