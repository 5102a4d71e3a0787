"""Target side of a pull: match the manifests exactly, READ every tensor, verify checksums."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from mxfs.weight_sources.agent import NixlAgent, Region, device_id, mem_type
from mxfs.weight_sources.checksum import checksum
from mxfs.weight_sources.errors import SourceRejected
from mxfs.weight_sources.model import SourceMetadata, TensorDesc

log = logging.getLogger(__name__)


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def describe(tensors: Mapping[str, torch.Tensor], with_checksums: bool = True) -> list[TensorDesc]:
    """The manifest of local tensors (addresses in this process, checksums on their device)."""
    return [
        TensorDesc(name, dtype_name(t), tuple(t.shape), t.numel() * t.element_size(), t.data_ptr(), device_id(t),
                   checksum(t) if with_checksums else b"")
        for name, t in sorted(tensors.items())
    ]


def match(local: Mapping[str, torch.Tensor], remote: list[TensorDesc]) -> list[tuple[torch.Tensor, TensorDesc]]:
    """Pair every local tensor with the source's; names, dtypes, shapes, sizes must match exactly."""
    by_name = {d.name: d for d in remote}
    problems = []
    missing, extra = sorted(set(local) - set(by_name)), sorted(set(by_name) - set(local))
    if missing:
        problems.append(f"source lacks {len(missing)} tensors (e.g. {missing[:3]})")
    if extra:
        problems.append(f"source has {len(extra)} unknown tensors (e.g. {extra[:3]})")
    pairs = []
    for name in sorted(set(local) & set(by_name)):
        t, d = local[name], by_name[name]
        size = t.numel() * t.element_size()
        if (dtype_name(t), tuple(t.shape), size) != (d.dtype, d.shape, d.size):
            problems.append(f"{name}: ours {dtype_name(t)}{list(t.shape)} {size}B, "
                            f"source {d.dtype}{list(d.shape)} {d.size}B")
        elif not t.is_contiguous():
            problems.append(f"{name}: our tensor is not contiguous")
        else:
            pairs.append((t, d))
    if problems:
        raise SourceRejected("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    return pairs


@dataclass(frozen=True)
class PullStats:
    source_id: str
    tensors: int
    nbytes: int
    seconds: float
    checksums: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def gbps(self) -> float:
        return self.nbytes / max(self.seconds, 1e-9) / 1e9


def pull(agent: NixlAgent, source: SourceMetadata, local: Mapping[str, torch.Tensor],
         timeout_s: float) -> PullStats:
    """READ ``source``'s tensors into ``local`` (registered with ``agent``) and verify them.

    Raises SourceRejected (mismatch, bad checksum) or TransferFailed (NIXL error, time-out);
    on either the local tensors hold partial data and must be reloaded by the caller.
    """
    pairs = match(local, source.tensors)
    if any(d.size and not d.checksum for _, d in pairs):
        raise SourceRejected("source published tensors without checksums")
    start = time.monotonic()
    moves, seen = [], set()
    for t, d in pairs:
        key = (t.data_ptr(), d.size)
        if d.size == 0 or key in seen:  # tied weights share storage: copy once
            continue
        seen.add(key)
        moves.append((Region(t.data_ptr(), d.size, device_id(t)), Region(d.addr, d.size, d.device_id)))
    local_mem = {mem_type(t) for t, _ in pairs} or {"DRAM"}
    if len(local_mem) != 1:
        raise SourceRejected(f"local tensors span several memory types: {sorted(local_mem)}")
    remote = agent.add_remote(source.agent_metadata, source.info.agent_name)
    try:
        if remote != source.info.agent_name:
            raise SourceRejected(f"agent metadata names {remote!r}, registry says {source.info.agent_name!r}")
        agent.read(remote, moves, local_mem.pop(), source.mem_type, timeout_s)
    except BaseException:
        agent.remove_remote(remote)  # a retry loads fresh metadata
        raise
    nbytes = sum(m[0].length for m in moves)
    copied = time.monotonic() - start
    sums = {d.name: checksum(t) for t, d in pairs}
    bad = [d.name for _, d in pairs if sums[d.name] != d.checksum]
    if bad:
        raise SourceRejected(f"{len(bad)} tensors failed their checksum (e.g. {bad[:3]})")
    stats = PullStats(source.info.source_id, len(pairs), nbytes, time.monotonic() - start, sums)
    log.info("pulled %d tensors, %.1f MB from source %s in %.3fs (copy %.3fs, %.2f GB/s incl. verify)",
             stats.tensors, nbytes / 1e6, stats.source_id, stats.seconds, copied, stats.gbps)
    return stats
