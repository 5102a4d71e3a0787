"""Hostile origins: an HF endpoint that lies in its listing, an S3 server that ignores Range.

The server refuses such a model with a clear error, names no file from the hostile
values, reads no unbounded body, and keeps serving its other models.
"""

from __future__ import annotations

import hashlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from mxfs.errors import ManifestError, SourceError
from mxfs.rpc.client import MxfsClient
from tests.support.hf_endpoint import HubEndpoint
from tests.support.stub_http import flood, serve_http, stub_s3_store

WEIGHTS = bytes(range(256)) * 256  # 64 KiB: an LFS file
FILES = {"config.json": b'{"model_type": "llama"}', "weights.bin": WEIGHTS}


@pytest.mark.parametrize("lie", [
    {"lfs": {"sha256": "../../../../../../pwned-lfs"}},
    {"lfs": {"sha256": "ab" * 16}},
    {"size": -5},
    {"size": 1 << 62},
    {"rfilename": "../../../../pwned-name"},
    {"blobId": "../pwned-blob-id"},
])
def test_hostile_hub_listing_is_refused(hub: HubEndpoint, inproc_server, tmp_path: Path, lie: dict) -> None:
    hub.add_commit("good/model", FILES)
    hub.add_commit("evil/model", FILES)
    target = "config.json" if "blobId" in lie else "weights.bin"
    hub.sibling_patch[("evil/model", target)] = lie
    server = inproc_server(origins=["hf"], origin_eager_bytes=0)
    client = MxfsClient(server.address)
    try:
        with pytest.raises(ManifestError, match=r"Hub|size"):
            client.get_manifest("evil/model")
        good = client.get_manifest("good/model")  # the server keeps serving its other models
        assert good.file("weights.bin").sha256 == hashlib.sha256(WEIGHTS).hexdigest()
        data = client.read_range("good/model", good.revision, "weights.bin", 0, len(WEIGHTS))
        assert bytes(data) == WEIGHTS
    finally:
        client.close()
    assert not list(tmp_path.rglob("*pwned*"))


class _RangeIgnoringS3(BaseHTTPRequestHandler):
    """Answers every GET with a 200 and a body far larger than any range asked for."""

    body_bytes = 256 * 1024 * 1024
    sent = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.body_bytes))
        self.send_header("ETag", '"abc"')
        self.end_headers()
        flood(self, "sent", self.body_bytes >> 20)


def test_s3_body_that_ignores_range_is_read_with_a_bound() -> None:
    _RangeIgnoringS3.sent = 0
    with serve_http(_RangeIgnoringS3) as endpoint, pytest.raises(SourceError, match="range"):
        stub_s3_store(endpoint, retries=None).get_range("org/model/weights.bin", 4096, 1024, "abc")
    assert _RangeIgnoringS3.sent < 64 * 1024 * 1024, "the whole body was read"


class _ListingStore:
    """An object store whose listing is whatever the test says (no bytes are ever read)."""

    scheme, bucket = "s3", "hostile"

    def __init__(self, listing: list[tuple[str, int, str]]) -> None:
        self.listing = listing

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        return [(k, s, e) for k, s, e in self.listing if k.startswith(prefix)]

    def get_range(self, key: str, offset: int, length: int, etag: str) -> bytes:
        raise AssertionError("a hostile listing must be refused before any read")


@pytest.mark.parametrize("size", [-1, 1 << 62])
def test_hostile_object_listing_sizes_are_refused(size: int) -> None:
    from mxfs.origins.objstore import ObjectStoreSource

    store = _ListingStore([("m/org/model/config.json", 10, "e1"), ("m/org/model/w.bin", size, "e2")])
    with pytest.raises(ManifestError, match="size"):
        ObjectStoreSource(store, "m").snapshot("org/model", "")


def test_hostile_object_keys_are_skipped() -> None:
    from mxfs.origins.objstore import ObjectStoreSource

    store = _ListingStore([("m/org/model/config.json", 10, "e1"), ("m/org/model/../../../pwned", 5, "e2"),
                           ("m/org/model/a//b", 5, "e3"), ("m/org/model/nul\x00", 5, "e4")])
    snap = ObjectStoreSource(store, "m").snapshot("org/model", "")
    assert [f.path for f in snap.files] == ["config.json"]
