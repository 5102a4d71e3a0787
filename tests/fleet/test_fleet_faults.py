"""A fleet on an emulated network: server and 4-5 daemons each in a network namespace.

Every test checks that every node's bytes equal the origin's and that no single read() waited
past the fetch timeout, while links are cut, slowed, made lossy or saturated, and a node joins
mid-run. Server egress is read off the server's NIC counter.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mxfs.demo import wait_for
from mxfs.manifest.model import Manifest
from mxfs.nodectl import status
from tests.conftest import BLOCK_SIZE, MODEL
from tests.fleet.conftest import ReadResult, read_tree
from tests.support.fleet import FleetNode, NetFleet

FETCH_TIMEOUT_S = 10.0  # the daemon's default --fetch-timeout
READ_BOUND_S = FETCH_TIMEOUT_S + 5.0  # one timeout plus the next tier's answer


def start(fleet: NetFleet, models_dir: Path, n: int) -> list[FleetNode]:
    fleet.start_server(models_dir, BLOCK_SIZE)
    nodes = [fleet.start_node(wait_model=MODEL) for _ in range(n)]
    wait_for(lambda: fleet.registered_nodes() >= n, 30, f"{n} nodes in the registry")
    return nodes


def read_all_at_once(nodes: list[FleetNode], timeout_s: float = 120) -> list[ReadResult]:
    results = [ReadResult() for _ in nodes]
    threads = [threading.Thread(target=read_tree, args=(nd.mountpoint / MODEL, r))
               for nd, r in zip(nodes, results, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    return results


def check(results: list[ReadResult], origin_hashes: dict[str, str]) -> None:
    for i, r in enumerate(results):
        assert not r.error, f"node {i}: {r.error}"
        assert r.hashes == origin_hashes, f"node {i} read wrong bytes"
        assert r.slowest_read_s < READ_BOUND_S, f"node {i}: a read() took {r.slowest_read_s:.1f}s"


def model_size(origin_hashes: dict[str, str], models_dir: Path) -> int:
    return sum((models_dir / MODEL / p).stat().st_size for p in origin_hashes)


def wait_holds_all(fleet: NetFleet, node: FleetNode, manifest: Manifest) -> None:
    """Until the registry lists every block of every file as held by ``node``."""
    me = node.node_id()

    def done() -> bool:
        for entry in manifest.files:
            found, _ = fleet.registry(lambda c, e=entry: c.holders(e.sha256, manifest.block_size))
            held = {h.node.node_id: len(h.blocks) for h in found}
            if held.get(me, 0) < entry.block_count(manifest.block_size):
                return False
        return True

    wait_for(done, 30, f"{node.name}'s holdings announced")


def manifest_of(fleet: NetFleet) -> Manifest:
    from mxfs.rpc.client import MxfsClient
    from tests.support.fleet import SERVER_IP, SERVER_PORT, in_netns

    def get() -> Manifest:
        client = MxfsClient(f"{SERVER_IP}:{SERVER_PORT}")
        try:
            return client.get_manifest(MODEL)
        finally:
            client.close()

    assert fleet.server is not None
    return in_netns(fleet.server.ns, get)


def test_cold_fleet_reads_exact_bytes_for_about_one_copy(net_fleet, models_dir, origin_hashes):
    fleet = net_fleet(rate_mbit=200)
    nodes = start(fleet, models_dir, 4)
    _, tx0 = fleet.server.nic_bytes()
    check(read_all_at_once(nodes), origin_hashes)
    copies = (fleet.server.nic_bytes()[1] - tx0) / model_size(origin_hashes, models_dir)
    assert copies <= 1.25, f"server egress {copies:.2f} copies for 4 cold nodes"
    assert sum(status(nd.mountpoint).bytes_by_tier.get("peer", 0) for nd in nodes) > 0


def test_peer_link_cut_mid_transfer(net_fleet, models_dir, origin_hashes):
    fleet = net_fleet(rate_mbit=200)
    nodes = start(fleet, models_dir, 4)
    check(read_all_at_once(nodes[:1]), origin_hashes)
    wait_holds_all(fleet, nodes[0], manifest_of(fleet))
    nodes[0].link.shape(rate_mbit=16)  # the only holder, and slow: its transfers last
    results = [ReadResult() for _ in nodes[1:]]
    threads = [threading.Thread(target=read_tree, args=(nd.mountpoint / MODEL, r))
               for nd, r in zip(nodes[1:], results, strict=True)]
    for t in threads:
        t.start()
    wait_for(lambda: fleet.node_metric(nodes[0], "mxfs_node_peer_served_bytes_total") > BLOCK_SIZE, 30,
             "node 0 serving its peers")
    nodes[0].link.cut()

    def avoided() -> bool:  # what an operator sees in `mxfs status`: node 0 is being skipped
        lines = [line for nd in nodes[1:] for line in status(nd.mountpoint).peers]
        return any(nodes[0].ip in line and ("unreachable" in line or "slow" in line) for line in lines)

    wait_for(avoided, 30, "node 0 shown as avoided in mxfs status")
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    check(results, origin_hashes)
    failed = sum(fleet.node_metric(nd, "mxfs_node_tier_failures_total")
                 + fleet.node_metric(nd, "mxfs_node_tier_hedges_total") for nd in nodes[1:])
    assert failed > 0, "no node noticed the cut link"
    # recovery: the link comes back, a joining node is served by node 0 again
    nodes[0].link.restore()
    nodes[0].link.shape(rate_mbit=200)
    served = fleet.node_metric(nodes[0], "mxfs_node_peer_served_bytes_total")
    joiner = fleet.start_node(wait_model=MODEL)
    check(read_all_at_once([joiner]), origin_hashes)
    assert any(nodes[0].ip in line for line in status(joiner.mountpoint).peers)  # it talked to node 0
    assert fleet.node_metric(nodes[0], "mxfs_node_peer_served_bytes_total") > served  # and node 0 served


def test_slow_lossy_peer_costs_time_not_bytes(net_fleet, models_dir, origin_hashes):
    fleet = net_fleet(rate_mbit=200)
    nodes = start(fleet, models_dir, 4)
    check(read_all_at_once(nodes[:1]), origin_hashes)
    wait_holds_all(fleet, nodes[0], manifest_of(fleet))
    nodes[0].link.shape(rate_mbit=8, loss_pct=3)
    _, tx0 = fleet.server.nic_bytes()
    start_t = time.monotonic()
    check(read_all_at_once(nodes[1:]), origin_hashes)
    assert time.monotonic() - start_t < 90
    copies = (fleet.server.nic_bytes()[1] - tx0) / model_size(origin_hashes, models_dir)
    assert copies <= 2.0, f"{copies:.2f} copies: the fleet went to the server instead of exchanging"
    lines = [line for nd in nodes[1:] for line in status(nd.mountpoint).peers]
    assert any(nodes[0].ip in line for line in lines), lines  # node 0 was used (and is listed)


def test_saturated_server_link_and_a_node_joining_mid_run(net_fleet, models_dir, origin_hashes):
    fleet = net_fleet(rate_mbit=200)
    nodes = start(fleet, models_dir, 4)
    fleet.server.link.shape(rate_mbit=40)  # ~5 s for one copy: every cold read queues on it
    _, tx0 = fleet.server.nic_bytes()
    results = [ReadResult() for _ in range(5)]
    threads = [threading.Thread(target=read_tree, args=(nd.mountpoint / MODEL, r))
               for nd, r in zip(nodes, results, strict=False)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(status(nd.mountpoint).bytes_by_tier.get("server", 0) for nd in nodes) > 0, 30,
             "the fleet's first fetches")
    joiner = fleet.start_node(wait_model=MODEL)
    late = threading.Thread(target=read_tree, args=(joiner.mountpoint / MODEL, results[4]))
    late.start()
    for t in [*threads, late]:
        t.join(120)
    assert not any(t.is_alive() for t in [*threads, late])
    check(results, origin_hashes)
    copies = (fleet.server.nic_bytes()[1] - tx0) / model_size(origin_hashes, models_dir)
    assert copies <= 1.3, f"server egress {copies:.2f} copies for 5 nodes"
