"""A stand-alone P2P source for tests: random CPU tensors, published to an mxfs server.

Prints ``READY <source id>`` once published, then obeys stdin lines: ``corrupt NAME``
flips bytes of one tensor in place (no re-publish), ``exit`` unpublishes and exits.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from mxfs.weight_sources.client import SourceClient
from mxfs.weight_sources.model import SourceIdentity
from mxfs.weight_sources.peer import Peer


def make_tensors(seed: int, mb: int) -> dict[str, torch.Tensor]:
    """Deterministic tensors: a few small ones, a tied pair, and bulk to reach ``mb`` MiB."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "embed.weight": torch.randn(512, 64, generator=g).to(torch.bfloat16),
        "norm.weight": torch.ones(64, dtype=torch.float32),
        "odd.bytes": torch.randint(0, 255, (13,), generator=g, dtype=torch.uint8),
        "empty": torch.empty(0, dtype=torch.float16),
    }
    out["lm_head.weight"] = out["embed.weight"]  # tied: same storage
    n = 0
    while sum(t.numel() * t.element_size() for t in out.values()) < mb << 20:
        out[f"layers.{n}.w"] = torch.randn(1024, 1024, generator=g).to(torch.float16)
        n += 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--identity", required=True, help="SourceIdentity as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mb", type=int, default=8)
    args = ap.parse_args()
    tensors = make_tensors(args.seed, args.mb)
    peer = Peer(SourceClient(args.server), SourceIdentity.from_json(json.loads(args.identity)))
    peer.register(tensors)
    peer.publish()
    print(f"READY {peer.source_id}", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "corrupt":
            tensors[arg].view(-1).view(torch.uint8)[:8] ^= 0x5A
            print("CORRUPTED", flush=True)
        elif cmd == "exit":
            break
    peer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
