"""Read safetensors weights as fast as the node allows, from mxfs or plain files.

Per file: when the daemon says the file is complete (xattr ``user.mxfs.backing``), read the
local cache file directly (no FUSE), after checking its size and that it has no holes, and
check again after reading (an eviction in between means: read it again through the mount).
Otherwise read through the mount (or the plain file) with large sequential reads.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mxfs.vllm.resolve import xattr

log = logging.getLogger(__name__)

READ_CHUNK = 64 << 20
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class BackingChanged(OSError):
    """The complete cache file stopped being complete while we read it."""


@dataclass
class ReadStats:
    """Bytes and seconds per path taken ("backing", "mount", "file")."""

    nbytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, how: str, nbytes: int, seconds: float) -> None:
        self.nbytes[how] = self.nbytes.get(how, 0) + nbytes
        self.seconds[how] = self.seconds.get(how, 0.0) + seconds

    def summary(self) -> str:
        return ", ".join(f"{how} {n / 1e6:.1f} MB at {n / max(self.seconds[how], 1e-9) / 1e9:.2f} GB/s"
                         for how, n in sorted(self.nbytes.items())) or "nothing read"


def complete_backing(path: Path) -> Path | None:
    """The daemon's complete local copy of ``path``, if it has one right now (size, no holes)."""
    backing, size = xattr(path, "backing"), xattr(path, "size")
    if not backing or size is None:
        return None
    try:
        fd = os.open(backing, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not _whole(fd, int(size)):
            return None
    finally:
        os.close(fd)
    return Path(backing)


def _whole(fd: int, size: int) -> bool:
    if os.fstat(fd).st_size != size:
        return False
    try:
        return size == 0 or os.lseek(fd, 0, os.SEEK_HOLE) >= size
    except OSError:
        return True  # no SEEK_HOLE support: the size check stands


def _readinto(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done : done + READ_CHUNK]], offset + done)
        if n <= 0:
            raise OSError(f"short read at {offset + done}")
        done += n


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


def read_file(path: Path, how: str, stats: ReadStats) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of one safetensors file, in file order, each read with large preads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        header, base = _header(fd)
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = DTYPES.get(info["dtype"])
            if dtype is None:
                raise OSError(f"{path}: unsupported dtype {info['dtype']} of {name}")
            buf = torch.empty(end - begin, dtype=torch.uint8)
            start = time.perf_counter()
            _readinto(fd, memoryview(buf.numpy()), base + begin)
            stats.add(how, end - begin, time.perf_counter() - start)
            yield name, buf.view(dtype).reshape(info["shape"])
        if how == "backing" and not _whole(fd, os.fstat(fd).st_size):
            raise BackingChanged(f"{path} lost blocks while being read")
    finally:
        os.close(fd)


def iter_weights(files: list[Path], stats: ReadStats) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of every file, preferring complete backing files; logs the path of each file."""
    for path in files:
        backing = complete_backing(path)
        if backing is not None:
            try:
                yield from read_file(backing, "backing", stats)
                if xattr(path, "backing") == str(backing):
                    continue
                log.warning("%s stopped being complete during the read: reading it through the mount", path)
            except (BackingChanged, FileNotFoundError) as exc:
                log.warning("backing file of %s changed (%s): reading it through the mount", path, exc)
        how = "mount" if xattr(path, "model") else "file"
        yield from read_file(path, how, stats)
