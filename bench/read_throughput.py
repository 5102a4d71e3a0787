#!/usr/bin/env python3
"""Read paths of a >=1 GiB model through a mxfs mount against the raw paths, in one run.

Every row is a ratio to the raw path named beside it, both measured in this run:

* warm read through the mount (node cache, page cache dropped) vs raw origin read, dropped
* re-read through the mount (kernel page cache) vs raw page-cache read
* cold read through the mount (blocks from the server on loopback) vs a plain local copy
* ``mxfs prefetch --wait`` then read (page cache dropped) vs raw origin read, dropped
* random 4 KiB reads over a hydrated file vs the same reads of the origin file (dropped)
* every tensor through ``safetensors.safe_open`` (+ torch), HF layout on the mount, warm,
  vs the same from the origin directory (both page cache dropped)
* the daemon's CPU seconds per GiB of a cold read (no raw counterpart; target <= 1.0)
* the node's cache blobs read raw, page cache dropped, vs the origin files (layout check)

``--no-passthrough`` runs the mount rows once more with passthrough switched off, where
the mount has that option. Page cache drops need root (else rows say "not dropped").
A disk read or copy here varies by tens of percent from one run to the next, so the whole
set runs ``--rounds`` times (3); each ratio is taken within its round (the raw dropped read
again right before each row compared with it, the local copy right before the cold read),
and the table shows the median of each row (and the range of its ratio).
Usage: python bench/read_throughput.py [--size 1GiB] [--rounds 3] [--workdir DIR] [--block-size 4MiB]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import process_cpu_seconds, read_all
from mxfs.config import parse_size
from mxfs.manifest.names import hub_folder
from mxfs.modelgen import ModelShape, generate_model
from tests.support.cluster import MountProc, ServerProc

MODEL = "bench/model"
RANDOM_READS = 4000


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - start


def local_copy(src: Path, dst: Path) -> int:
    """A plain local copy of every file (``shutil.copyfile``), synced: the bytes a cold read must move."""
    total = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        total += path.stat().st_size
    os.sync()
    return total


def random_reads(path: Path, offsets: list[int]) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            os.pread(fd, 4096, off)
    finally:
        os.close(fd)
    return 4096 * len(offsets)


def load_tensors(folder: Path) -> int:
    """Every tensor of every safetensors file, materialized (safe_open maps lazily)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                total += f.get_tensor(name).clone().nbytes
    return total


def blob_dir(node: MountProc) -> Path:
    return node.cache_dir / "blocks" / "blobs"


class Bench:
    def __init__(self, work: Path, origin: Path, block_size: int, extra: list[str]) -> None:
        self.work, self.origin, self.extra = work, origin, extra
        self.server = ServerProc(origin, work / "server-cache", block_size=block_size)
        self.rows: list[tuple[str, str, float | None, float | None]] = []  # label, vs, GB/s or value, ratio
        self.dropped = True

    def drop(self) -> None:
        self.dropped = drop_page_cache() and self.dropped

    def row(self, label: str, vs: str, got: tuple[int, float], base: tuple[int, float] | None) -> None:
        rate = got[0] / got[1]
        ratio = rate / (base[0] / base[1]) if base else None
        self.rows.append((label, vs, rate / 1e9, ratio))

    def node(self, name: str, fresh: bool) -> MountProc:
        node = MountProc(self.work / f"mnt-{name}", self.work / f"node-cache-{name}", self.server.address,
                         extra=self.extra)
        if fresh:
            shutil.rmtree(node.cache_dir, ignore_errors=True)
        return node.start(wait_model=MODEL)

    def run(self, tag: str) -> None:
        model = self.origin / MODEL

        def raw_dropped() -> tuple[int, float]:
            """The raw origin read, page cache dropped, measured again right before each row
            that compares with it: this disk's speed drifts by 2x within a minute."""
            self.drop()
            return read_all(model)

        # raw baselines
        read_all(model)
        raw_cached = read_all(model)
        copy_dir = self.work / "local-copy"
        shutil.rmtree(copy_dir, ignore_errors=True)
        self.drop()
        plain_copy = timed(lambda: local_copy(model, copy_dir))
        shutil.rmtree(copy_dir, ignore_errors=True)

        # cold (empty node cache), with the daemon's CPU time
        node = self.node(f"cold{tag}", fresh=True)
        try:
            self.drop()
            before = process_cpu_seconds(node.proc.pid)
            cold = read_all(node.mountpoint / MODEL)
            cpu = process_cpu_seconds(node.proc.pid) - before
        finally:
            node.stop()
        self.row(f"mount cold{tag}", "plain local copy", cold, plain_copy)
        self.rows.append((f"daemon CPU s/GiB, cold{tag}", "target <= 1.0", cpu / (cold[0] / 2**30), None))

        # warm (node cache kept, page cache dropped), then the kernel re-read
        node = self.node(f"cold{tag}", fresh=False)
        try:
            base = raw_dropped()
            self.drop()
            self.row(f"mount warm, page cache dropped{tag}", "raw read, dropped", read_all(node.mountpoint / MODEL),
                     base)
            read_all(node.mountpoint / MODEL)
            self.row(f"mount re-read (page cache){tag}", "raw read, page cache", read_all(node.mountpoint / MODEL),
                     raw_cached)
        finally:
            node.stop()
        base = raw_dropped()
        self.drop()
        blobs = blob_dir(node)
        self.row(f"node cache blobs read raw, dropped{tag}", "raw read, dropped", read_all(blobs), base)

        # prefetch --wait, then read; random reads; safe_open through the HF layout
        node = self.node(f"prefetch{tag}", fresh=True)
        try:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mxfs", "prefetch", str(node.mountpoint / MODEL), "--wait",
                            "--no-progress"], check=True, capture_output=True, timeout=1200)
            size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
            self.row(f"mxfs prefetch --wait (hydration){tag}", "plain local copy", (size, time.perf_counter() - start),
                     plain_copy)
            base = raw_dropped()
            self.drop()
            self.row(f"read after prefetch --wait, dropped{tag}", "raw read, dropped",
                     read_all(node.mountpoint / MODEL), base)
            shard = max(model.glob("*.safetensors"), key=lambda p: p.stat().st_size)
            rng = random.Random(0)
            offsets = [rng.randrange(0, shard.stat().st_size - 4096) & ~4095 for _ in range(RANDOM_READS)]
            self.drop()
            raw_random = timed(lambda: random_reads(shard, offsets))
            self.drop()
            self.row(f"random 4 KiB reads, hydrated, dropped{tag}", "raw random reads, dropped",
                     timed(lambda: random_reads(node.mountpoint / MODEL / shard.name, offsets)), raw_random)
            try:
                import torch  # noqa: F401 - safe_open(framework="pt") needs it

                self.drop()
                raw_st = timed(lambda: load_tensors(model))
                snapshot = next((node.mountpoint / "hub" / hub_folder(MODEL) / "snapshots").iterdir())
                self.drop()
                self.row(f"safe_open every tensor, HF layout, warm{tag}", "same from origin dir",
                         timed(lambda: load_tensors(snapshot)), raw_st)
            except ImportError:
                self.rows.append((f"safe_open every tensor{tag}", "torch not installed", None, None))
        finally:
            node.stop()

    def table(self, rounds: list[list[tuple[str, str, float | None, float | None]]]) -> str:
        """One line per row: the median over ``rounds`` of its value and of its ratio."""
        lines = [f"| {'row':<48} | {'compared with':<26} | {'GB/s':>7} | {'ratio':>6} | {'ratio range':>11} |",
                 f"|{'-' * 50}|{'-' * 28}|{'-' * 9}|{'-' * 8}|{'-' * 13}|"]
        by_label: dict[str, list[tuple[str, float | None, float | None]]] = {}
        for rows in rounds:
            for label, vs, value, ratio in rows:
                by_label.setdefault(label, []).append((vs, value, ratio))
        for label, seen in by_label.items():
            values = [v for _, v, _ in seen if v is not None]
            ratios = [r for _, _, r in seen if r is not None]
            v = f"{statistics.median(values):7.2f}" if values else ""
            r = f"{statistics.median(ratios):5.2f}x" if ratios else ""
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
            lines.append(f"| {label:<48} | {seen[0][0]:<26} | {v:>7} | {r:>6} | {spread:>11} |")
        return "\n".join(lines)


def mount_has_option(option: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "mxfs", "mount", "--help"], capture_output=True, text=True)
    return option in out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--block-size", default="4MiB")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-passthrough", action="store_true",
                    help="also run every mount row with passthrough switched off")
    ap.add_argument("--rounds", type=int, default=3, help="runs of the whole set (the table shows medians)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mxfs-bench-"))
    origin = work / "origin"
    if not (origin / MODEL / "config.json").exists():
        print(f"generating {args.size} model in {origin} ...", file=sys.stderr)
        generate_model(origin / MODEL, ModelShape.for_size(parse_size(args.size)), shard_bytes=512 << 20)
    bench = Bench(work, origin, parse_size(args.block_size), [])
    bench.server.start()
    rounds: list[list[tuple[str, str, float | None, float | None]]] = []
    try:
        for k in range(max(1, args.rounds)):
            bench.rows, bench.extra = [], []
            bench.run("")
            if args.no_passthrough:
                if mount_has_option("--no-passthrough"):
                    bench.extra = ["--no-passthrough"]
                    bench.run(" [no passthrough]")
                else:
                    bench.rows.append(("[no passthrough]", "mount has no such option", None, None))
            rounds.append(bench.rows)
            print(f"round {k + 1}: " + ", ".join(f"{label} {ratio:.2f}x" for label, _, _, ratio in bench.rows
                                                 if ratio is not None and "cold" in label), file=sys.stderr)
    finally:
        bench.server.stop()
    size = sum(p.stat().st_size for p in (origin / MODEL).rglob("*") if p.is_file())
    print(f"\nmodel {size / 2**30:.2f} GiB, block size {args.block_size}, {os.cpu_count()} cores"
          f"{'' if bench.dropped else ', PAGE CACHE NOT DROPPED (not root)'}; median of {len(rounds)} round(s)\n")
    print(bench.table(rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
