"""Real server + FUSE mount over remote origins: the tree first, lazy verified blocks, exact bytes.

The server runs in ``lazy`` origin mode with a small eager bound, so every shard is served
block by block from the origin: ``ls -lR`` moves no weight byte from the origin, one
tensor read moves exactly the blocks that cover it (counted by the server's origin-egress
metric and by the HF endpoint's own byte counters), a full read moves every byte once.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from mxfs.manifest.builder import read_tensors
from mxfs.manifest.hashing import block_digest
from mxfs.rpc.client import MxfsClient
from tests.conftest import BLOCK_SIZE, MODEL, sha256_file

HF_NAME = "hf-org/tiny-llama"
EAGER = 64 * 1024
ORIGIN = "mxfs_server_origin_bytes_total"


def _header_bytes(path: Path) -> int:
    """What the server reads of a lazy safetensors file to index it: 8 + header length."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    return 8 + n


def _span(begin: int, end: int, size: int) -> int:
    """Bytes of the blocks that cover ``[begin, end)`` of a ``size``-byte file."""
    first, last = begin // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
    return min(size, (last + 1) * BLOCK_SIZE) - first * BLOCK_SIZE


def _check_lazy_then_exact(daemon, server, model: str, origin_dir: Path, origin_hashes: dict[str, str],
                           origin_sent: Callable[[], float]) -> dict:
    sizes = {rel: (origin_dir / rel).stat().st_size for rel in origin_hashes}
    lazy = sorted(rel for rel, size in sizes.items() if size > EAGER)
    assert lazy and all(rel.endswith(".safetensors") for rel in lazy)
    at_resolve = sum(s for rel, s in sizes.items() if rel not in lazy) + sum(
        _header_bytes(origin_dir / rel) for rel in lazy)

    root = daemon.mountpoint / model
    listing = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    assert listing == sizes
    assert server.metric("mxfs_server_bytes_served_total") == 0  # tree shown, no weight byte moved
    assert origin_sent() == at_resolve  # small files + shard headers only

    shard = lazy[0]
    tensor = max(read_tensors(origin_dir / shard, sizes[shard])[1:], key=lambda t: t.nbytes)
    assert tensor.begin >= BLOCK_SIZE  # not in the header's block
    with open(root / shard, "rb", buffering=0) as fh:
        fh.seek(tensor.begin)
        got = fh.read(tensor.nbytes)
    with open(origin_dir / shard, "rb") as fh:
        fh.seek(tensor.begin)
        assert got == fh.read(tensor.nbytes)
    one_tensor = origin_sent() - at_resolve
    assert one_tensor == _span(tensor.begin, tensor.end, sizes[shard])  # exactly its blocks, once
    blocks = one_tensor // BLOCK_SIZE + (1 if one_tensor % BLOCK_SIZE else 0)
    assert server.metric("mxfs_server_blocks_served_total") <= blocks

    for rel, digest in origin_hashes.items():
        assert sha256_file(root / rel) == digest, rel
    assert origin_sent() == sum(sizes.values()) + at_resolve - sum(
        s for rel, s in sizes.items() if rel not in lazy)  # every byte once, headers twice
    return {"shard": shard, "tensor": tensor, "one_tensor": one_tensor, "at_resolve": at_resolve}


@pytest.mark.fuse
def test_hf_model_mounts_lazily_and_reads_back_exactly(hub, server_env, start_server, start_mount, models_dir,
                                                        origin_hashes, tmp_path):
    hub.add_dir(HF_NAME, models_dir / MODEL)
    server_env(origins="hf", origin_eager_bytes=EAGER)
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    daemon = start_mount(server, wait_model=HF_NAME, extra=["--readahead-blocks", "0"])
    sent = _check_lazy_then_exact(daemon, server, HF_NAME, models_dir / MODEL, origin_hashes,
                                  lambda: server.metric(ORIGIN))
    assert sum(hub.bytes_sent.values()) == server.metric(ORIGIN)  # the endpoint's own count agrees
    print(f"\nHF one-tensor origin egress: {sent['tensor'].nbytes} tensor bytes -> {sent['one_tensor']} "
          f"origin bytes (+{sent['at_resolve']} at resolve)")


@pytest.mark.fuse
def test_s3_model_mounts_lazily_and_reads_back_exactly(s3_env, s3_model, server_env, start_server, start_mount,
                                                        models_dir, origin_hashes, tmp_path):
    server_env(origins=s3_model, origin_eager_bytes=EAGER)
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    daemon = start_mount(server, wait_model=MODEL, extra=["--readahead-blocks", "0"])
    origin_dir = models_dir / MODEL
    sent = _check_lazy_then_exact(daemon, server, MODEL, origin_dir, origin_hashes, lambda: server.metric(ORIGIN))
    print(f"\nS3 one-tensor origin egress: {sent['tensor'].nbytes} tensor bytes -> {sent['one_tensor']} "
          f"origin bytes (+{sent['at_resolve']} at resolve)")

    # object-store files publish no digest: no sha256 xattr claims one
    shard = daemon.mountpoint / MODEL / sent["shard"]
    assert "user.mxfs.sha256" not in os.listxattr(shard)

    # a restarted server keeps the hashes (and bytes) it read: asking again moves nothing
    manifest = MxfsClient(server.address).get_manifest(MODEL)
    entry = manifest.file(sent["shard"])
    assert entry.lazy and not entry.digest_verified
    first = sent["tensor"].begin // BLOCK_SIZE
    server.stop()
    server.start()
    client = MxfsClient(server.address)
    hashes = client.block_hashes(MODEL, manifest.revision, entry.path, first, 2)
    data = (origin_dir / entry.path).read_bytes()
    assert hashes == [block_digest(manifest.block_hash, data[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE])
                      for i in (first, first + 1)]
    assert server.metric(ORIGIN) == 0
    client.close()

    # a restarted daemon without the server still verifies and serves what it cached
    server.stop()
    daemon.stop()
    daemon.start(wait_model=MODEL)
    assert sha256_file(shard) == origin_hashes[sent["shard"]]


def test_block_hashes_on_demand_single_flight_and_ensure(s3_env, s3_model, inproc_server, models_dir):
    """GetBlockHashes reads only the asked blocks from the origin, once; Ensure fills the rest."""
    import threading

    import grpc

    from mxfs.rpc import model_express_model_pb2 as pb
    from mxfs.rpc import model_express_model_pb2_grpc as pb_grpc

    server = inproc_server(origins=[s3_model], origin_eager_bytes=EAGER)
    client = MxfsClient(server.address)
    manifest = client.get_manifest(MODEL)
    egress = server.metrics.origin_bytes._value.get
    at_resolve = egress()
    entry = max(manifest.files, key=lambda f: f.size)
    assert entry.lazy
    data = (models_dir / MODEL / entry.path).read_bytes()
    digest = [block_digest(manifest.block_hash, data[i:i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE)]

    results: list[list[bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(
        client.block_hashes(MODEL, manifest.revision, entry.path, 5, 3, lookahead=4))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6
    for r in results:  # the asked blocks, then known lookahead (none yet)
        assert r == digest[5:8] + [b""] * 4
    assert egress() - at_resolve == 3 * BLOCK_SIZE  # concurrent askers shared one origin read per block
    assert client.block_hashes(MODEL, manifest.revision, entry.path, 5, 3) == digest[5:8]
    assert egress() - at_resolve == 3 * BLOCK_SIZE
    assert client.read_range(MODEL, manifest.revision, entry.path, 5 * BLOCK_SIZE + 7, 100) == \
        data[5 * BLOCK_SIZE + 7: 5 * BLOCK_SIZE + 107]
    assert egress() - at_resolve == 3 * BLOCK_SIZE  # served from the server's block store

    stub = pb_grpc.ModelServiceStub(grpc.insecure_channel(server.address))
    ups = list(stub.EnsureModelDownloaded(pb.ModelDownloadRequest(model_name=MODEL, provider=pb.S3)))
    assert ups[-1].status == pb.DOWNLOADED
    lazy_total = sum(f.size for f in manifest.files if f.lazy)
    assert egress() - at_resolve == lazy_total  # everything is on the server now, each block once
    assert client.block_hashes(MODEL, manifest.revision, entry.path, 0, 1, lookahead=15) == digest[:16]
    assert egress() - at_resolve == lazy_total
    client.close()


def test_hydrate_mode_downloads_the_whole_snapshot_with_the_manifest(hub, inproc_server, models_dir, origin_hashes):
    hub.add_dir(HF_NAME, models_dir / MODEL)
    server = inproc_server(origins=["hf"], origin_mode="hydrate", origin_eager_bytes=EAGER)
    manifest = MxfsClient(server.address).get_manifest(HF_NAME)
    assert not any(f.lazy for f in manifest.files) and all(f.digest_verified for f in manifest.files)
    total = sum((models_dir / MODEL / rel).stat().st_size for rel in origin_hashes)
    assert server.metrics.origin_bytes._value.get() == total == sum(hub.bytes_sent.values())
