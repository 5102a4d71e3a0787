"""Safetensors header parsing that treats every header as hostile.

Format: 8 bytes little-endian header length N, N bytes of UTF-8 JSON, then the data
section. Offsets in the JSON are relative to the data section.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections.abc import Callable

from mxfs.errors import SafetensorsHeaderError
from mxfs.manifest.model import TensorInfo

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TENSORS = 1_000_000
MAX_DIMS = 16

#: element width in bits of every safetensors dtype
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

ReadAt = Callable[[int, int], bytes]


def header_length(prefix: bytes, file_size: int) -> int:
    """Validate the 8-byte length prefix against the real file size."""
    if file_size < 8 or len(prefix) < 8:
        raise SafetensorsHeaderError(f"file too small for a safetensors header ({file_size} bytes)")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n == 0 or n > MAX_HEADER_BYTES or n > file_size - 8:
        raise SafetensorsHeaderError(
            f"header length {n} is impossible for a {file_size}-byte file "
            f"(limit {MAX_HEADER_BYTES})"
        )
    return n


def parse_header(read_at: ReadAt, file_size: int) -> tuple[int, tuple[TensorInfo, ...]]:
    """Parse and validate a safetensors header; returns (data offset, tensors by offset).

    ``read_at(offset, length)`` returns bytes of the file. Nothing is allocated from a
    claimed size before that size is checked against the real file size.
    """
    n = header_length(read_at(0, 8), file_size)
    raw = read_at(8, n)
    if len(raw) != n:
        raise SafetensorsHeaderError(f"header truncated: wanted {n} bytes, got {len(raw)}")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsHeaderError(f"header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SafetensorsHeaderError("header must be a JSON object")
    data_start = 8 + n
    data_size = file_size - data_start
    meta = doc.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise SafetensorsHeaderError("__metadata__ must map strings to strings")
    if len(doc) > MAX_TENSORS:
        raise SafetensorsHeaderError(f"too many tensors ({len(doc)})")
    tensors = [_tensor(name, spec, data_start, data_size) for name, spec in doc.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    for prev, cur in itertools.pairwise(tensors):
        if cur.begin < prev.end:
            raise SafetensorsHeaderError(f"tensors {prev.name!r} and {cur.name!r} overlap")
    return data_start, tuple(tensors)


def _tensor(name: str, spec: object, data_start: int, data_size: int) -> TensorInfo:
    if not isinstance(spec, dict):
        raise SafetensorsHeaderError(f"tensor {name!r}: entry must be an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise SafetensorsHeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise SafetensorsHeaderError(f"tensor {name!r}: bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise SafetensorsHeaderError(f"tensor {name!r}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise SafetensorsHeaderError(
            f"tensor {name!r}: data_offsets {offsets} outside the {data_size}-byte data section"
        )
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        raise SafetensorsHeaderError(
            f"tensor {name!r}: {dtype}{shape} needs {bits / 8:g} bytes, offsets give {end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)
