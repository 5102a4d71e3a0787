"""Read safetensors weights through a private mapping, from the mxfs mount or from plain files.

Every byte comes through the mount (or a plain file): the daemon verifies each cached block
against the manifest's hash before it answers, so a cache blob damaged on disk is refetched,
never loaded. The loader never opens the daemon's cache blobs itself (``user.mxfs.backing``):
measured here, a blob read directly was no faster than the mount with the page cache dropped
(1.07 vs 1.08 GB/s), it would need its own verification to be safe, and kernel passthrough
makes the mount read like the blob (docs/loader.md). Tensors are views of the mapping, not
copies: vLLM copies each into its parameter, so a tensor costs one copy, as with safetensors'
own loader (64 MiB preads into fresh tensors cost a second copy plus the faults of new memory:
1.61x safetensors' "Loading weights took" against 0.86x with the mapping, 1.47 GB, 3 rounds).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mxfs.vllm.resolve import xattr

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass
class ReadStats:
    """Bytes and seconds per path taken ("mount", "file")."""

    nbytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, how: str, nbytes: int, seconds: float) -> None:
        self.nbytes[how] = self.nbytes.get(how, 0) + nbytes
        self.seconds[how] = self.seconds.get(how, 0.0) + seconds

    @property
    def total(self) -> int:
        return sum(self.nbytes.values())

    def summary(self) -> str:
        return ", ".join(f"{how} {n / 1e6:.1f} MB at {n / max(self.seconds[how], 1e-9) / 1e9:.2f} GB/s"
                         for how, n in sorted(self.nbytes.items())) or "nothing read"


def _header(fd: int) -> tuple[dict, int]:
    head = os.pread(fd, 8, 0)
    if len(head) != 8:
        raise OSError("not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head)
    if n > 100 << 20:
        raise OSError(f"safetensors header of {n} bytes is implausible")
    header = json.loads(os.pread(fd, n, 8))
    header.pop("__metadata__", None)
    return header, 8 + n


MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+: a failed read is an error, not SIGBUS


def read_file(path: Path, how: str, stats: ReadStats) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of one safetensors file, in file order, as a view of a private mapping of
    the file (no copy: vLLM copies it into its parameter, as with safetensors' own mmap).

    Each tensor's pages are faulted in with ``MADV_POPULATE_READ`` before the view is made,
    so a read the mount fails (EIO) raises ``OSError`` here instead of a SIGBUS later."""
    fd = os.open(path, os.O_RDONLY)
    try:
        header, base = _header(fd)
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else None
    finally:
        os.close(fd)
    if mapped is None:
        return
    mapped.madvise(mmap.MADV_SEQUENTIAL)
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise OSError(f"{path}: unsupported dtype {info['dtype']} of {name}")
        if base + end > size or begin > end:
            raise OSError(f"{path}: tensor {name} lies outside the file")
        start = time.perf_counter()
        if end > begin:
            page = (base + begin) & ~(mmap.PAGESIZE - 1)
            mapped.madvise(MADV_POPULATE_READ, page, base + end - page)
            tensor = torch.frombuffer(mapped, dtype=torch.uint8, count=end - begin, offset=base + begin)
        else:
            tensor = torch.empty(0, dtype=torch.uint8)
        stats.add(how, end - begin, time.perf_counter() - start)
        yield name, tensor.view(dtype).reshape(info["shape"])


def iter_weights(files: list[Path], stats: ReadStats) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of every file; files on an mxfs mount count as "mount", others as "file"."""
    for path in files:
        yield from read_file(path, "mount" if xattr(path, "model") else "file", stats)
