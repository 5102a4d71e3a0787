#!/usr/bin/env python3
"""Read throughput of a >=1 GiB model: raw origin vs the mxfs mount (cold, warm, re-read, prefetch).

Prints one table of GB/s and the ratio to the raw page-cache read, all measured in this run.
Usage: python bench/read_throughput.py [--size 1GiB] [--workdir DIR] [--block-size 4MiB] [--no-passthrough]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import read_all
from mxfs.config import parse_size
from mxfs.modelgen import ModelShape, generate_model
from tests.support.cluster import MountProc, ServerProc

MODEL = "bench/model"


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--block-size", default="4MiB")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-passthrough", action="store_true", help="mount with --no-passthrough")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mxfs-bench-"))
    origin = work / "origin"
    if not (origin / MODEL / "config.json").exists():
        print(f"generating {args.size} model in {origin} ...", file=sys.stderr)
        generate_model(origin / MODEL, ModelShape.for_size(parse_size(args.size)), shard_bytes=512 << 20)
    rows: list[tuple[str, int, float]] = []

    read_all(origin / MODEL)  # warm the page cache
    rows.append(("raw origin read (page cache)", *read_all(origin / MODEL)))

    server = ServerProc(origin, work / "server-cache", block_size=parse_size(args.block_size)).start()
    node = MountProc(work / "mnt", work / "node-cache", server.address,
                     ["--no-passthrough"] if args.no_passthrough else [])
    try:
        shutil.rmtree(node.cache_dir, ignore_errors=True)
        node.start(wait_model=MODEL)
        rows.append(("mount cold (blocks from server)", *read_all(node.mountpoint / MODEL)))
        node.stop()
        dropped = drop_page_cache()
        node.start(wait_model=MODEL)
        label = "mount warm (local cache" + (", page cache dropped)" if dropped else ")")
        rows.append((label, *read_all(node.mountpoint / MODEL)))
        rows.append(("mount re-read (kernel page cache)", *read_all(node.mountpoint / MODEL)))
        node.stop()
        shutil.rmtree(node.cache_dir, ignore_errors=True)
        node.start(wait_model=MODEL)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mxfs", "prefetch", str(node.mountpoint / MODEL), "--no-progress"],
                       check=True, capture_output=True, timeout=600)
        elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (origin / MODEL).rglob("*") if p.is_file())
        rows.append(("mxfs prefetch hydration", size, elapsed))
        rows.append(("read after prefetch", *read_all(node.mountpoint / MODEL)))
    finally:
        node.stop()
        server.stop()

    raw = rows[0][1] / rows[0][2]
    print(f"\nmodel {rows[0][1] / 2**30:.2f} GiB, block size {args.block_size}, {os.cpu_count()} cores, "
          f"passthrough {'off' if args.no_passthrough else 'on'}\n")
    print(f"| {'path':<44} | {'GB/s':>7} | {'x raw':>7} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 9}|")
    for label, nbytes, seconds in rows:
        rate = nbytes / seconds
        print(f"| {label:<44} | {rate / 1e9:7.2f} | {rate / raw:7.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
