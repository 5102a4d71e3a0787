"""Block reads from S3 by presigned GET into the server's buffers: right bytes, and every
broken answer (truncated, stalled, wrong range, whole object, changed ETag, refused) gives a
clear error and never leaves a wrong or partial block in the server's store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from mxfs.errors import ModelNotFound, OriginDenied, SourceError
from mxfs.manifest.model import FileEntry
from mxfs.origins import presigned
from mxfs.origins.objstore import S3Store
from mxfs.origins.remote import OriginUnavailable
from mxfs.server.origin_blocks import OriginBlocks
from tests.support.stub_http import flood, serve_http, stub_s3_store

BS = 64 * 1024
DATA = hashlib.sha256(b"seed").digest() * (6 * BS // 32)  # 6 blocks
ETAG = "abc"


class _FakeS3(BaseHTTPRequestHandler):
    """GET /bucket/<key>: the key names how the answer is broken (``ok`` is a plain 206)."""

    protocol_version = "HTTP/1.1"
    connections = 0
    requests: list[tuple[str, bool]] = []  # (key, presigned?)
    sent_whole = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def log_message(self, *args: object) -> None:
        pass

    def _range(self) -> tuple[int, int]:
        lo, hi = self.headers["Range"].removeprefix("bytes=").split("-")
        return int(lo), int(hi)

    def _head(self, status: int, length: int, content_range: str | None = None, etag: str = ETAG) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", f'"{etag}"')
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()

    def do_GET(self) -> None:
        key = self.path.split("?")[0].split("/", 2)[2]
        signed_in_query = "X-Amz-Signature=" in self.path
        type(self).requests.append((key, signed_in_query))
        lo, hi = self._range()
        body = DATA[lo:hi + 1]
        plain_range = f"bytes {lo}-{hi}/{len(DATA)}"
        if key == "ok" or (key == "redirected" and not signed_in_query):
            self._head(206, len(body), plain_range)
            self.wfile.write(body)
        elif key == "cut":  # the connection drops 1.5 blocks into the object
            self._head(206, len(body), plain_range)
            self.wfile.write(DATA[lo:min(hi + 1, max(lo, BS + BS // 2))])
            self.close_connection = True
        elif key == "stall":
            self._head(206, len(body), plain_range)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(3)
            self.close_connection = True
        elif key == "badrange":
            self._head(206, len(body), f"bytes {lo + 1}-{hi + 1}/{len(DATA)}")
            self.wfile.write(body)
        elif key == "whole":  # ignores Range: the whole (huge) object
            self._head(200, 256 << 20)
            flood(self, "sent_whole", 256)
            self.close_connection = True
        elif key == "changed":
            self._head(206, len(body), plain_range, etag="other")
            self.wfile.write(body)
        elif key == "redirected":  # presigned GETs refused, signed-header ones served (a region redirect, say)
            doc = b"<Error><Code>AuthorizationQueryParametersError</Code></Error>"
            self._head(400, len(doc))
            self.wfile.write(doc)
        else:  # "denied"
            doc = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
            self._head(403, len(doc))
            self.wfile.write(doc)


@pytest.fixture
def fake_s3() -> Iterator[str]:
    _FakeS3.connections, _FakeS3.requests, _FakeS3.sent_whole = 0, [], 0
    with serve_http(_FakeS3) as endpoint:
        yield endpoint


def _read(store: S3Store, key: str, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    with store.open_range(key, offset, length, ETAG) as body:
        body.fill(memoryview(buf))
    return bytes(buf)


def test_presigned_reads_are_exact_and_keep_their_connection(fake_s3: str) -> None:
    store = stub_s3_store(fake_s3)
    for offset, length in [(0, BS), (BS + 7, 3 * BS), (len(DATA) - 5, 5), (0, len(DATA))]:
        assert _read(store, "ok", offset, length) == DATA[offset:offset + length]
    assert _FakeS3.connections == 1  # one kept-alive connection for every read
    assert all(signed for _, signed in _FakeS3.requests)  # no botocore GetObject call


@pytest.mark.parametrize(("key", "error", "match"), [
    ("cut", OriginUnavailable, "early"),
    ("badrange", SourceError, "answered"),
    ("whole", SourceError, "ignored the range"),
    ("changed", ModelNotFound, "changed at the origin"),
    ("denied", OriginDenied, "refused"),
])
def test_broken_answers_are_clear_errors(fake_s3: str, key: str, error: type, match: str) -> None:
    store = stub_s3_store(fake_s3)
    with pytest.raises(error, match=match):
        _read(store, key, BS, 2 * BS)
    assert _FakeS3.sent_whole < 64 << 20, "the body of a range-ignoring answer was read"
    assert _read(store, "ok", 0, BS) == DATA[:BS]  # the store still reads by presigned GET
    assert _FakeS3.requests[-1] == ("ok", True)


def test_a_stalled_body_times_out(fake_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presigned, "IO_TIMEOUT_S", 0.5)
    store = stub_s3_store(fake_s3)
    start = time.monotonic()
    with pytest.raises(OriginUnavailable, match="mid-body"):
        _read(store, "stall", 0, 2 * BS)
    assert time.monotonic() - start < 2.5


def test_what_only_botocore_can_read_goes_through_botocore_from_then_on(fake_s3: str) -> None:
    store = stub_s3_store(fake_s3)
    assert _read(store, "redirected", BS, BS) == DATA[BS:2 * BS]
    assert _read(store, "redirected", 0, BS) == DATA[:BS]
    assert not store.presigned_reads
    assert [signed for _, signed in _FakeS3.requests] == [True, False, False]


def test_a_body_cut_mid_run_stores_only_whole_verified_blocks(fake_s3: str, tmp_path: Path) -> None:
    """Blocks 0-5 asked (read in runs of two): the connection drops inside block 1, every retry
    too. Block 0 is served and stored; the others fail clearly and nothing of them is stored."""
    store = stub_s3_store(fake_s3)
    entry = FileEntry("w.bin", len(DATA), "ef" * 32, ())

    def read(offset: int, length: int) -> bytes:
        return store.get_range("cut", offset, length, ETAG)

    read.open = lambda offset, length: store.open_range("cut", offset, length, ETAG)  # type: ignore[attr-defined]
    pool = ThreadPoolExecutor(4)
    blocks = OriginBlocks(tmp_path / "ob", pool, 1 << 30)
    try:
        with pytest.raises(OriginUnavailable, match="early"):
            blocks.block_hashes(entry, BS, 0, 6, 0, read, "blake3")
        assert blocks.store.contains(entry.key(0, BS))
        assert not any(blocks.store.contains(entry.key(i, BS)) for i in range(1, 6))
        assert not any(entry.key(i, BS) in blocks.hot for i in range(1, 6))
        assert all(blocks.hashes.get(entry.key(i, BS), "blake3") is None for i in range(1, 6))
        assert blocks.block(entry, BS, 0, read, "blake3") == DATA[:BS]
        blob = blocks.store.blob_path(entry.sha256).read_bytes()
        assert blob[BS:] == bytes(len(blob) - BS)  # nothing of a partial block on disk
    finally:
        blocks.close()
        pool.shutdown()


def test_s3rver_ranges_by_presigned_get_match_botocore(s3_env, s3_model: str, models_dir: Path) -> None:
    from tests.conftest import MODEL

    shard = sorted((models_dir / MODEL).glob("*.safetensors"))[0]
    key = f"zoo/{MODEL}/{shard.name}"
    data = shard.read_bytes()
    store = S3Store("models")  # the client the server builds
    etag = dict((k, e) for k, _, e in store.list(key))[key]
    for offset, length in [(0, 4096), (12345, 3 << 20), (len(data) - 100, 100)]:
        buf = bytearray(length)
        with store.open_range(key, offset, length, etag) as body:
            body.fill(memoryview(buf))
        assert bytes(buf) == data[offset:offset + length] == store.get_range(key, offset, length, etag)
    assert store.presigned_reads  # still on the presigned path


def test_presigned_reads_over_https_verify_like_the_client(tmp_path: Path) -> None:
    import ssl

    from tests.support.tls import make_tls

    tls = make_tls(tmp_path / "tls")
    _FakeS3.connections, _FakeS3.requests = 0, []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    with serve_http(_FakeS3, tls=ctx) as endpoint:
        trusted = stub_s3_store(endpoint, verify=str(tls.ca))
        assert _read(trusted, "ok", BS + 3, 2 * BS) == DATA[BS + 3:3 * BS + 3]
        assert _read(trusted, "ok", 0, BS) == DATA[:BS]
        assert trusted.presigned_reads and _FakeS3.connections == 1
        with pytest.raises(OriginUnavailable, match="early"):
            _read(trusted, "cut", BS, 2 * BS)
        with pytest.raises(OriginUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            _read(stub_s3_store(endpoint), "ok", 0, BS)  # the system CAs do not know the test CA
