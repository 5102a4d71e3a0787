"""Ranged reads from a Hugging Face endpoint straight into the caller's buffers
(``HuggingFaceSource.open_range``): exact bytes across chunk and buffer boundaries, a body
cut short is ``OriginUnavailable``, one longer than asked is refused without reading on."""

from __future__ import annotations

import hashlib
from http.server import BaseHTTPRequestHandler

import pytest

from mxfs.errors import SourceError
from mxfs.origins.hf import HuggingFaceSource
from mxfs.origins.remote import OriginUnavailable, RemoteFile, Snapshot
from tests.support.hf_endpoint import HubEndpoint
from tests.support.stub_http import flood, serve_http

DATA = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(40_000))  # 1.25 MB: an LFS file


def _fill(source: HuggingFaceSource, snap: Snapshot, path: str, offset: int, sizes: list[int]) -> bytes:
    parts = []
    with source.open_range(snap, path, offset, sum(sizes)) as body:
        for size in sizes:
            buf = bytearray(size)
            body.fill(memoryview(buf))
            parts.append(bytes(buf))
    return b"".join(parts)


def test_ranges_fill_the_callers_buffers_exactly(hub: HubEndpoint) -> None:
    hub.add_commit("org/model", {"w.safetensors": DATA})
    source = HuggingFaceSource()
    snap = source.snapshot("org/model", "main")
    for offset, sizes in [(0, [len(DATA)]), (12345, [1, 4096, 65536 + 7, 300_000]), (len(DATA) - 10, [3, 7])]:
        assert _fill(source, snap, "w.safetensors", offset, sizes) == DATA[offset:offset + sum(sizes)]
    assert source.read(snap, "w.safetensors", 777, 100_000) == DATA[777:100_777]
    hub.cut_after["w.safetensors"] = 50_000
    with pytest.raises(OriginUnavailable, match=r"(failed|ended) after \d+"):
        _fill(source, snap, "w.safetensors", 0, [40_000, 40_000])


class _Overlong(BaseHTTPRequestHandler):
    """A 206 whose Content-Length promises (and whose body sends) far more than the range."""

    protocol_version = "HTTP/1.1"
    sent = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(206)
        self.send_header("Content-Range", f"bytes 0-99/{len(DATA)}")
        self.send_header("Content-Length", str(64 << 20))
        self.end_headers()
        flood(self, "sent", 64)


def test_a_body_longer_than_asked_is_refused_without_reading_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _Overlong.sent = 0
    with serve_http(_Overlong) as endpoint:
        source = HuggingFaceSource(endpoint=endpoint)
        snap = Snapshot("org/model", "a" * 40, (RemoteFile("w.bin", len(DATA)),), source.label)
        with pytest.raises(SourceError, match="more than the 100 bytes"):
            _fill(source, snap, "w.bin", 0, [100])
    assert _Overlong.sent < 32 << 20, "the overlong body was read to its end"
