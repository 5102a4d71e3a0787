"""The emulated network itself: namespaces, shaped links, cuts and the stale sweep."""

from __future__ import annotations

import socket
import subprocess

from tests.fleet.conftest import require_netns
from tests.support.fleet import PREFIX_BASE, NetFleet, in_netns, sweep_stale


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


def test_stale_namespaces_of_dead_runs_are_swept_and_live_ones_kept(tmp_path):
    require_netns()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX_BASE}-{dead.pid}-abcdef-n0"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=20)
    with NetFleet(tmp_path) as fleet:
        fleet._ensure_bridge()  # a live run's namespace
        removed = sweep_stale()
        assert stale in removed and stale not in _netns()
        assert fleet.bridge_ns in _netns()
    assert fleet.bridge_ns not in _netns()  # close() removed its own


def test_links_are_shaped_cut_and_restored(tmp_path):
    require_netns()
    with NetFleet(tmp_path, rate_mbit=80) as fleet:
        link = fleet._attach(f"{fleet.prefix}-x", "10.77.9.1")
        qdisc = subprocess.run(["tc", "-n", link.ns, "qdisc", "show", "dev", "eth0"],
                               capture_output=True, text=True, timeout=20).stdout
        assert "tbf" in qdisc and "80Mbit" in qdisc
        link.shape(rate_mbit=8, loss_pct=5)
        link.cut()
        rules = subprocess.run(["ip", "netns", "exec", link.ns, "nft", "list", "table", "inet", "netfleet"],
                               capture_output=True, text=True, timeout=20).stdout
        assert "drop" in rules and "numgen" not in rules  # a cut drops everything
        link.restore()
        rules = subprocess.run(["ip", "netns", "exec", link.ns, "nft", "list", "table", "inet", "netfleet"],
                               capture_output=True, text=True, timeout=20).stdout
        assert "numgen random mod 10000 < 500" in rules  # back to 5 % loss
        # the member sees only its own namespace's interfaces: nothing leaks to the host
        names = in_netns(link.ns, socket.if_nameindex)
        assert {n for _, n in names} == {"eth0", "lo"}
