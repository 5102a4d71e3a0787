"""Cold fetch of one safetensors file from a local S3 server (s3rver on 127.0.0.1).

Compares, in one run: a cold read through a fresh mxfs mount (server reading lazy blocks
from S3 + FUSE read on the node), a plain boto3 download (8 threads), and
runai-model-streamer (``s3://``). The mount is read like a file (1 MiB reads into one
buffer) and its bytes checked against the source after the clock stops. Prints GB/s,
ratios and the CPU seconds per GiB of every process involved (on a machine with few
cores the processes share them, so CPU per GiB explains the ratios).
Usage: ``python bench/origin_fetch.py [--size 256MiB]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import own_cpu_seconds, process_cpu_seconds, read_all
from mxfs.config import parse_size
from mxfs.manifest.builder import file_sha256 as sha256_file
from tests.support.s3 import S3Server

BUCKET, PREFIX, MODEL = "bench", "zoo", "bench-org/model"
KEY = f"{PREFIX}/{MODEL}/model.safetensors"


def make_file(path: Path, size: int) -> None:
    from safetensors.numpy import save_file

    n = 16
    per = size // n // 2
    rng = np.random.default_rng(0)
    save_file({f"layer.{i}.weight": rng.integers(0, 2**16, per, dtype=np.uint16).view(np.float16)
               for i in range(n)}, str(path))


@dataclass
class Result:
    """Seconds of one method (or why it did not run) and CPU seconds per process."""

    secs: float | str
    cpu: dict[str, float] = field(default_factory=dict)


def timed(fn: Callable[[], object], pids: dict[str, int]) -> Result:
    """``fn()`` timed, with the CPU seconds it cost each process in ``pids`` (0: this one)."""
    def cpu(pid: int) -> float:
        return own_cpu_seconds() if pid == 0 else process_cpu_seconds(pid)

    before = {name: cpu(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    fn()
    secs = time.perf_counter() - start
    return Result(secs, {name: cpu(pid) - before[name] for name, pid in pids.items()})


def bench_boto3(s3: S3Server, out: Path) -> Result:
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(max_concurrency=8, multipart_chunksize=8 << 20)
    client = s3.client()
    return timed(lambda: client.download_file(BUCKET, KEY, str(out), Config=cfg),
                 {"s3rver": s3.proc.pid, "client": 0})


def bench_runai(s3: S3Server) -> Result:
    try:
        from runai_model_streamer import SafetensorsStreamer
    except ImportError as exc:
        return Result(f"not installed ({exc})")

    def run() -> int:
        total = 0
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(f"s3://{BUCKET}/{KEY}")
            for _, tensor in streamer.get_tensors():
                total += tensor.nbytes
        return total

    return timed(run, {"s3rver": s3.proc.pid, "client": 0})


def bench_mxfs(work: Path, s3: S3Server, want_sha256: str) -> Result:
    from tests.support.cluster import MountProc, ServerProc, fuse_available

    if not fuse_available():
        return Result("skipped (no /dev/fuse)")
    os.environ["MODEL_EXPRESS_SERVER_ORIGINS"] = f"s3://{BUCKET}/{PREFIX}"
    (work / "empty").mkdir(exist_ok=True)
    server = ServerProc(work / "empty", work / "server-cache", block_size=4 << 20).start()
    mount = MountProc(work / "mnt", work / "node-cache", server.address).start()
    path = work / "mnt" / MODEL / "model.safetensors"
    try:
        result = timed(lambda: read_all(path.parent),
                       {"s3rver": s3.proc.pid, "server": server.proc.pid, "daemon": mount.proc.pid, "client": 0})
        if sha256_file(path) != want_sha256:  # after the clock: the bytes must be the source's
            raise SystemExit(f"the mount returned wrong bytes for {path}")
        return result
    finally:
        mount.stop()
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="256MiB", help="file size (default 256MiB)")
    ap.add_argument("--workdir", help="keep everything (logs included) in this directory")
    args = ap.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="mxfs-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        s3 = S3Server(work / "s3", buckets=(BUCKET,)).start()
        try:
            os.environ.update(s3.env())
            os.environ.setdefault("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")
            src = work / "model.safetensors"
            make_file(src, size)
            nbytes = src.stat().st_size
            s3.client().upload_file(str(src), BUCKET, KEY)
            results = {
                "boto3 download_file (8 threads)": bench_boto3(s3, work / "boto3.out"),
                "runai-model-streamer s3://": bench_runai(s3),
                "mxfs cold mount read (lazy origin + FUSE)": bench_mxfs(work, s3, sha256_file(src)),
            }
        finally:
            s3.stop()
    base = results["boto3 download_file (8 threads)"].secs
    gib = nbytes / 2**30
    print(f"\nfile: {nbytes / 2**20:.0f} MiB safetensors on s3rver (127.0.0.1), cold, one run\n")
    print(f"| {'method':<46} | {'seconds':>8} | {'GB/s':>6} | {'vs boto3':>8} | CPU s/GiB per process |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 8}|{'-' * 10}|{'-' * 23}|")
    for name, r in results.items():
        cpu = ", ".join(f"{k} {v / gib:.2f}" for k, v in r.cpu.items())
        if isinstance(r.secs, str) or isinstance(base, str):
            print(f"| {name:<46} | {r.secs!s:>8} | {'':>6} | {'':>8} | {cpu} |")
        else:
            print(f"| {name:<46} | {r.secs:8.2f} | {nbytes / r.secs / 1e9:6.3f} | {base / r.secs:7.2f}x | {cpu} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
