"""Cold fetch of one safetensors file from a local S3 server (s3rver on 127.0.0.1).

Compares, in one run: a cold read through a fresh mxfs mount (server hydrating from S3 +
FUSE read on the node), a plain boto3 download (8 threads), and runai-model-streamer
(``s3://``). Prints GB/s and ratios. Usage: ``python bench/origin_fetch.py [--size 256MiB]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mxfs.config import parse_size
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


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_boto3(s3: S3Server, out: Path) -> float:
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(max_concurrency=8, multipart_chunksize=8 << 20)
    secs, _ = timed(lambda: s3.client().download_file(BUCKET, KEY, str(out), Config=cfg))
    return secs


def bench_runai() -> float | str:
    try:
        from runai_model_streamer import SafetensorsStreamer
    except ImportError as exc:
        return f"not installed ({exc})"

    def run() -> int:
        total = 0
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(f"s3://{BUCKET}/{KEY}")
            for _, tensor in streamer.get_tensors():
                total += tensor.nbytes
        return total

    secs, _ = timed(run)
    return secs


def bench_mxfs(work: Path, s3: S3Server) -> float | str:
    from tests.support.cluster import MountProc, ServerProc, fuse_available

    if not fuse_available():
        return "skipped (no /dev/fuse)"
    os.environ["MODEL_EXPRESS_SERVER_ORIGINS"] = f"s3://{BUCKET}/{PREFIX}"
    (work / "empty").mkdir(exist_ok=True)
    server = ServerProc(work / "empty", work / "server-cache", block_size=4 << 20).start()
    mount = MountProc(work / "mnt", work / "node-cache", server.address).start()
    try:
        def read() -> str:
            h = hashlib.sha256()
            with open(work / "mnt" / MODEL / "model.safetensors", "rb", buffering=0) as fh:
                while chunk := fh.read(8 << 20):
                    h.update(chunk)
            return h.hexdigest()

        secs, _ = timed(read)
        return secs
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
                "runai-model-streamer s3://": bench_runai(),
                "mxfs cold mount read (lazy origin + FUSE)": bench_mxfs(work, s3),
            }
        finally:
            s3.stop()
    base = results["boto3 download_file (8 threads)"]
    print(f"\nfile: {nbytes / 2**20:.0f} MiB safetensors on s3rver (127.0.0.1), cold, one run\n")
    print(f"| {'method':<46} | {'seconds':>8} | {'GB/s':>6} | {'vs boto3':>8} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 8}|{'-' * 10}|")
    for name, secs in results.items():
        if isinstance(secs, str):
            print(f"| {name:<46} | {secs:>8} | {'':>6} | {'':>8} |")
        else:
            print(f"| {name:<46} | {secs:8.2f} | {nbytes / secs / 1e9:6.3f} | {base / secs:7.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
