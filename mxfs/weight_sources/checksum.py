"""A cheap per-tensor checksum computed on the tensor's own device (GPU or CPU).

Two 64-bit sums over the tensor's bytes read as int32 words: a plain sum and a
position-weighted (Fletcher-like) sum, so both corruption and misplaced bytes show.
Integer addition modulo 2**64 is order independent, so any reduction order on any
device gives the same bytes. Work is chunked to bound temporary memory.
"""

from __future__ import annotations

import struct

import torch

CHUNK_WORDS = 1 << 24  # 64 MiB of tensor per step (128 MiB int64 temporaries)
_PERIOD = 65521
_weights: dict[tuple[str, int | None], torch.Tensor] = {}


def _weights_on(device: torch.device, n: int) -> torch.Tensor:
    """Weights 1.._PERIOD repeating, at least ``n`` long (cached per device, grown on demand)."""
    key = (device.type, device.index)
    w = _weights.get(key)
    if w is None or w.numel() < n:
        size = min(CHUNK_WORDS, max(n, 2 * (w.numel() if w is not None else 0), 1 << 16))
        w = torch.arange(size, dtype=torch.int64, device=device) % _PERIOD + 1
        _weights[key] = w
    return w


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor (a copy only if it is not contiguous)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def checksum(t: torch.Tensor) -> bytes:
    """16 bytes + the byte length; equal bytes on equal-kind devices give equal checksums."""
    raw = tensor_bytes(t)
    n = raw.numel()
    if raw.storage_offset() % 4:
        raw = raw.clone()
    nwords = n // 4
    plain = torch.zeros((), dtype=torch.int64, device=raw.device)
    weighted = torch.zeros((), dtype=torch.int64, device=raw.device)
    if nwords:
        words = raw[: nwords * 4].view(torch.int32)
        weights = _weights_on(raw.device, min(nwords, CHUNK_WORDS))
        for k, start in enumerate(range(0, nwords, CHUNK_WORDS)):
            w = words[start : start + CHUNK_WORDS].to(torch.int64)
            plain += w.sum()
            weighted += (w * weights[: w.numel()]).sum() * (k + 1)
    if n % 4:
        tail = raw[nwords * 4 :].to(torch.int64)
        plain += tail.sum()
        weighted += (tail * torch.arange(1, tail.numel() + 1, device=raw.device)).sum() * 7919
    return struct.pack("<qqQ", int(plain.item()), int(weighted.item()), n)
