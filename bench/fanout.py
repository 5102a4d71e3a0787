#!/usr/bin/env python3
"""Fan-out of one cold model to 1, 2, 4 and 8 node daemons reading it at the same time.

For each fleet size: fresh daemons (own mountpoints, caches, peer ports on 127.0.0.1)
mount the model, then every node reads every file through its mount at once. Prints the
wall time until the last node is done and the server's egress (block bytes it sent,
which on this local origin is also what it read from the origin) divided by the model
size, plus where the nodes' bytes came from. Targets (issue 4): at 8 nodes, egress
<= 1.2 copies and wall time <= 2x the single-node time.

Usage: python bench/fanout.py [--size 1GiB] [--nodes 1,2,4,8] [--workdir DIR] [--no-swarm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import read_all
from mxfs.block_peers.registry import HolderRegistryClient
from mxfs.config import parse_size
from mxfs.demo import free_port, wait_for
from mxfs.modelgen import ModelShape, generate_model
from mxfs.nodectl import status
from tests.support.cluster import MountProc, ServerProc

MODEL = "bench/fanout-model"
TOKEN = "fanout-bench-token"


def read_tree(root: Path, out: list, slot: int) -> None:
    """Read every file under ``root``; store (bytes, seconds) or the error in ``out[slot]``."""
    try:
        out[slot] = read_all(root)
    except OSError as exc:
        out[slot] = exc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fleet(server: ServerProc, work: Path, n: int, size: int, extra: list[str]) -> dict:
    nodes: list[MountProc] = []
    registry = HolderRegistryClient(server.address, TOKEN)
    try:
        for i in range(n):
            base = work / f"fleet{n}" / f"node{i}"
            flags = ["--peer-port", str(free_port()), "--peer-host", "127.0.0.1", "--peer-token", TOKEN,
                     "--model", MODEL, *extra]
            nodes.append(MountProc(base / "mnt", base / "cache", server.address, flags).start(wait_model=MODEL))
        wait_for(lambda: len(registry.nodes()) >= n, 30, "all nodes registered")
        before = server.metric("mxfs_server_bytes_served_total")
        pids = [nd.proc.pid for nd in nodes]
        cpu0 = [cpu_seconds(p) for p in pids]
        server_cpu0 = cpu_seconds(server.proc.pid)
        results: list = [None] * n
        threads = [threading.Thread(target=read_tree, args=(nd.mountpoint / MODEL, results, i))
                   for i, nd in enumerate(nodes)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=1800)
        wall = time.perf_counter() - start
        egress = server.metric("mxfs_server_bytes_served_total") - before
        node_cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        server_cpu = cpu_seconds(server.proc.pid) - server_cpu0
        errors = [r for r in results if not isinstance(r, tuple) or r[0] != size]
        tiers: dict[str, int] = {}
        for nd in nodes:
            for tier, b in status(nd.mountpoint).bytes_by_tier.items():
                tiers[tier] = tiers.get(tier, 0) + b
        return {"n": n, "wall": wall, "egress": egress / size, "errors": errors, "tiers": tiers,
                "node_cpu": sum(node_cpu) / n, "server_cpu": server_cpu,
                "slowest": max(r[1] for r in results if isinstance(r, tuple)) if not errors else float("nan")}
    finally:
        for nd in nodes:
            nd.stop()
        registry.close()
        shutil.rmtree(work / f"fleet{n}", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--block-size", default="4MiB")
    ap.add_argument("--nodes", default="1,2,4,8")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-swarm", action="store_true", help="peers, but no swarm split of first fetches")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mxfs-fanout-"))
    origin = work / "origin"
    model_dir = origin / MODEL
    if not (model_dir / "config.json").exists():
        print(f"generating a {parse_size(args.size) >> 20} MiB model in {model_dir} ...", flush=True)
        target = int(parse_size(args.size) * 1.03)  # the shape rounds to whole layers: stay >= --size
        generate_model(model_dir, ModelShape.for_size(target, hidden=1024, vocab=8192),
                       shard_bytes=256 << 20)
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    for p in files:  # the origin is warm for every fleet size alike
        with open(p, "rb") as fh:
            while fh.read(16 << 20):
                pass
    os.environ["MXFS_PEER_TOKEN"] = TOKEN  # the server subprocess enables its holder registry
    server = ServerProc(origin, work / "server-cache", block_size=parse_size(args.block_size)).start()
    extra = ["--no-peer-swarm"] if args.no_swarm else []
    rows = []
    try:
        for n in [int(x) for x in args.nodes.split(",")]:
            row = run_fleet(server, work, n, size, extra)
            rows.append(row)
            print(f"  {n} node(s): {row['wall']:.1f}s, egress {row['egress']:.2f} copies, "
                  f"{'OK' if not row['errors'] else row['errors']}", flush=True)
    finally:
        server.stop()
    base = rows[0]["wall"] if rows else 0.0
    print(f"\nfan-out of a {size / (1 << 30):.2f} GiB model ({len(files)} files, block {args.block_size}, "
          f"swarm {'off' if args.no_swarm else 'on'}), {os.cpu_count()} CPU cores, all on one machine")
    print(f"{'nodes':>5} {'wall s':>7} {'x 1-node':>8} {'egress/size':>11} {'server GiB':>10} "
          f"{'peers GiB':>9} {'CPU s/node':>10} {'server CPU s':>12} {'errors':>6}")
    for r in rows:
        t = r["tiers"]
        print(f"{r['n']:>5} {r['wall']:>7.1f} {r['wall'] / base:>8.2f} {r['egress']:>11.2f} "
              f"{t.get('server', 0) / (1 << 30):>10.2f} {t.get('peer', 0) / (1 << 30):>9.2f} "
              f"{r['node_cpu']:>10.1f} {r['server_cpu']:>12.1f} {len(r['errors']):>6}")
    print("targets at 8 nodes: egress/size <= 1.2, wall <= 2.0 x 1-node")
    print("(all daemons share this machine's cores: wall time grows with the fleet when CPU-bound;\n"
          " 'CPU s/node' is what each node spends, which is what a real one-daemon-per-node fleet pays)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
