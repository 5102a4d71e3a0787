"""Pull N GiB of bf16 tensors between two processes on one GPU, for each path the loader has.

Prints GB/s of: a same-device torch copy (the ceiling), a torch CUDA IPC pull between two
processes, and a NIXL READ through mxfs' own agent (``mxfs.weight_sources.transfer.pull``: exact
manifest match + per-tensor checksums). Every path's bytes are verified against the
source's checksums and, for the target, against a regenerated reference.

    python bench/gpu_pull.py --gib 4 --tensors 64            # on a GPU machine
    python bench/gpu_pull.py --device cpu --gib 0.25         # dry run of the same code on CPU

NIXL: install ``pip install --no-deps nixl nixl-cu13`` (+ numpy). To see which UCX transports
NIXL's bundled UCX picked: ``UCX_LOG_LEVEL=info UCX_PROTO_INFO=y``; try ``--ucx-tls``
(e.g. ``cuda_ipc,cuda_copy,tcp``) to ask for the CUDA transports explicitly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_tensors(gib: float, count: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """``count`` bf16 tensors totalling ``gib`` GiB, deterministic by seed on ``device``."""
    per = int(gib * (1 << 30)) // count // 2 // 4096 * 4096
    g = torch.Generator(device=device).manual_seed(seed)
    return {f"layer.{i}.weight": torch.randn(per // 4096, 4096, generator=g, device=device, dtype=torch.float32)
            .to(torch.bfloat16) for i in range(count)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def source_main(args: argparse.Namespace, q: mp.Queue, done: mp.Event) -> None:
    """The source process: tensors, checksums, CUDA IPC handles, a NIXL agent."""
    from mxfs.weight_sources.agent import NixlAgent, nixl_available
    from mxfs.weight_sources.transfer import describe

    tensors = make_tensors(args.gib, args.tensors, args.device)
    if not args.device.startswith("cuda"):
        for t in tensors.values():
            t.share_memory_()  # before describing: sharing moves CPU storage
    sync(args.device)
    manifest = describe(tensors)
    msg: dict = {"manifest": manifest, "ipc": tensors}
    if "nixl" in args.paths and nixl_available():
        agent = NixlAgent("bench-source", tuple(args.backends.split(",")))
        agent.register(tensors.values())
        msg["nixl"] = (agent.name, agent.metadata())
    q.put(msg)
    done.wait(timeout=args.timeout)


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / max(seconds, 1e-9) / 1e9


def verify(local: dict[str, torch.Tensor], manifest, reference: dict[str, torch.Tensor]) -> None:
    from mxfs.weight_sources.checksum import checksum

    for d in manifest:
        if checksum(local[d.name]) != d.checksum:
            raise SystemExit(f"checksum mismatch on {d.name}")
        if not torch.equal(local[d.name], reference[d.name]):
            raise SystemExit(f"bytes differ on {d.name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--paths", default="d2d,ipc,nixl")
    ap.add_argument("--backends", default="UCX")
    ap.add_argument("--ucx-tls", default="", help="sets UCX_TLS for both processes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.ucx_tls:
        os.environ["UCX_TLS"] = args.ucx_tls
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu for a dry run", file=sys.stderr)
        return 2
    from mxfs.weight_sources.agent import NixlAgent, nixl_available
    from mxfs.weight_sources.model import SourceIdentity, SourceInfo, SourceMetadata, Status
    from mxfs.weight_sources.transfer import pull

    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=source_main, args=(args, q, done), daemon=True)
    proc.start()
    results: dict[str, float] = {}
    try:
        reference = make_tensors(args.gib, args.tensors, args.device)
        local = {k: torch.empty_like(v) for k, v in reference.items()}
        nbytes = sum(v.numel() * v.element_size() for v in reference.values())
        print(f"{nbytes / (1 << 30):.2f} GiB in {len(reference)} bf16 tensors on {args.device}")
        msg = q.get(timeout=args.timeout)
        manifest = msg["manifest"]

        def best_copy(src: dict, zero_first: bool) -> float:
            """Fastest of ``args.repeat`` copies of every tensor of ``src`` into ``local``."""
            best = float("inf")
            for _ in range(args.repeat):
                if zero_first:
                    for v in local.values():
                        v.zero_()
                sync(args.device)
                t = time.perf_counter()
                for k, v in src.items():
                    local[k].copy_(v)
                sync(args.device)
                best = min(best, time.perf_counter() - t)
            verify(local, manifest, reference)
            return best

        if "d2d" in args.paths:
            results["d2d_copy_same_process"] = gbps(nbytes, best_copy(reference, zero_first=False))

        if "ipc" in args.paths:
            shared = msg["ipc"]  # mapped from the source process (CUDA IPC / shared memory)
            results["torch_ipc_pull"] = gbps(nbytes, best_copy(shared, zero_first=True))
            del shared

        if "nixl" in args.paths and "nixl" in msg and nixl_available():
            name, md = msg["nixl"]
            ident = SourceIdentity("bench/model", "0" * 40, "bfloat16", device=args.device.split(":")[0])
            info = SourceInfo("bench", ident, Status.READY, name)
            mem = "VRAM" if args.device.startswith("cuda") else "DRAM"
            meta = SourceMetadata(info, md, mem, manifest)
            agent = NixlAgent("bench-target", tuple(args.backends.split(",")))
            agent.register(local.values())
            best = float("inf")
            for _ in range(args.repeat):
                for v in local.values():
                    v.zero_()
                sync(args.device)
                stats = pull(agent, meta, local, args.timeout)  # READ + checksum verification
                best = min(best, stats.seconds)
            verify(local, manifest, reference)
            results["nixl_read_verified"] = gbps(nbytes, best)
            agent.close()
        elif "nixl" in args.paths:
            print("nixl not installed: skipped (pip install --no-deps nixl nixl-cu13)")
    finally:
        done.set()
        proc.join(timeout=30)
    base = results.get("d2d_copy_same_process")
    for path, rate in results.items():
        rel = f"  ({rate / base:.2f}x of D2D)" if base else ""
        print(f"{path:28s} {rate:10.1f} GB/s{rel}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bytes": nbytes, "device": args.device, "gbps": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
