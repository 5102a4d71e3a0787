"""The safetensors header parser against valid files and hostile headers."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from mxfs.errors import SafetensorsHeaderError
from mxfs.manifest.safetensors import MAX_HEADER_BYTES, parse_header


def _parse(blob: bytes):
    return parse_header(lambda off, n: blob[off : off + n], len(blob))


def _file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_real_file_round_trip():
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.float16)}
    blob = save(tensors, metadata={"format": "pt"})
    start, index = _parse(blob)
    by_name = {t.name: t for t in index}
    assert set(by_name) == {"a", "b"}
    a = by_name["a"]
    assert a.dtype == "F32" and a.shape == (3, 4)
    assert np.frombuffer(blob[a.begin : a.end], dtype=np.float32).reshape(3, 4).tolist() == tensors["a"].tolist()
    assert start > 8


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x01\x02", "too small"),
        (struct.pack("<Q", 0) + b"{}", "impossible"),
        (struct.pack("<Q", 10**15) + b"{}", "impossible"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"x" * 16, "impossible"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "UTF-8 JSON"),
        (struct.pack("<Q", 2) + b"[]", "JSON object"),
    ],
)
def test_malformed_prefix_and_json(blob, message):
    with pytest.raises(SafetensorsHeaderError, match=message):
        _parse(blob)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4, "bad data_offsets"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "outside"),
        ({"t": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}}, b"\0" * 4, "needs"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1 << 50]}}, b"\0" * 4, "outside"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
        ({"t": [1, 2]}, b"", "must be an object"),
    ],
)
def test_hostile_tensor_entries(header, data, message):
    with pytest.raises(SafetensorsHeaderError, match=message):
        _parse(_file(header, data))


def test_truncated_header():
    blob = _file({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"x")
    with pytest.raises(SafetensorsHeaderError):
        _parse(blob[:20])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(blob):
    with contextlib.suppress(SafetensorsHeaderError):
        _parse(blob)
