"""Block hash algorithms: BLAKE3 for new manifests, sha256 manifests and caches still read."""

from __future__ import annotations

import hashlib
import json
import struct
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
import trio

from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks
from mxfs.errors import BlockUnavailable, ManifestError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.hashes import BlockHashes
from mxfs.fetch.stats import FetchStats
from mxfs.manifest import hashing
from mxfs.manifest.builder import DigestCache, build_manifest
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.rpc import mxfs_pb2
from mxfs.rpc.convert import manifest_from_pb, manifest_to_pb
from mxfs.server.origin_blocks import OriginBlocks
from tests.unit.test_cache_chain import BytesTier
from tests.unit.test_lazy_blocks import Origin

BS = 64 * 1024
DATA = bytes(range(256)) * 1024 + b"tail"  # 5 blocks, the last one short


def _manifest(algorithm: str) -> Manifest:
    blocks = tuple(hashing.block_digest(algorithm, DATA[i:i + BS]) for i in range(0, len(DATA), BS))
    entry = FileEntry("w.bin", len(DATA), hashlib.sha256(DATA).hexdigest(), blocks)
    return Manifest("o/m", "a" * 40, BS, (entry,), "local:/x", block_hash=algorithm)


def test_digests_are_the_real_algorithms():
    assert hashing.block_digest("blake3", b"abc") == blake3.blake3(b"abc").digest()
    assert hashing.block_digest("sha256", b"abc") == hashlib.sha256(b"abc").digest()
    assert hashing.block_ok("blake3", memoryview(b"abc"), blake3.blake3(b"abc").digest())
    assert not hashing.block_ok("blake3", b"abc", hashlib.sha256(b"abc").digest())
    with pytest.raises(ValueError, match="unknown block hash"):
        hashing.block_digest("md5", b"abc")


def test_new_manifests_use_blake3_and_the_file_digest_stays_sha256(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(DATA)
    m = build_manifest("o/m", model, block_size=BS)
    f = m.file("w.bin")
    assert m.block_hash == "blake3" and f.sha256 == hashlib.sha256(DATA).hexdigest()
    assert f.block_hashes[0] == blake3.blake3(DATA[:BS]).digest()
    old = build_manifest("o/m", model, block_size=BS, block_hash="sha256")
    assert old.file("w.bin").block_hashes[0] == hashlib.sha256(DATA[:BS]).digest()
    assert old.revision == m.revision  # the revision names the content, not the block hash
    with pytest.raises(ValueError, match="unknown block hash"):
        build_manifest("o/m", model, block_size=BS, block_hash="crc32")


def test_digest_cache_entries_of_one_algorithm_never_serve_another(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(DATA)
    cache = DigestCache(tmp_path / "digests.json")
    old = build_manifest("o/m", model, block_size=BS, digests=cache, block_hash="sha256")
    cache.save()
    again = DigestCache(tmp_path / "digests.json")  # a digest cache written before BLAKE3 existed
    new = build_manifest("o/m", model, block_size=BS, digests=again)
    assert new.file("w.bin").block_hashes[0] == blake3.blake3(DATA[:BS]).digest()
    assert build_manifest("o/m", model, block_size=BS, digests=again, block_hash="sha256") == old


def test_manifest_records_its_algorithm_in_json_and_proto():
    for algorithm in hashing.ALGORITHMS:
        m = _manifest(algorithm)
        assert Manifest.from_json(m.to_json()) == m and Manifest.from_json(m.to_json()).block_hash == algorithm
        assert manifest_from_pb(manifest_to_pb(m)) == m
    # written before the field existed: JSON without it, proto with it empty -> sha256
    doc = json.loads(_manifest("sha256").to_json())
    del doc["block_hash"]
    assert Manifest.from_json(json.dumps(doc)).block_hash == "sha256"
    pb = manifest_to_pb(_manifest("sha256"))
    pb.block_hash = ""
    assert manifest_from_pb(mxfs_pb2.Manifest.FromString(pb.SerializeToString())).block_hash == "sha256"
    doc["block_hash"] = "md5"
    with pytest.raises(ManifestError, match="md5"):
        Manifest.from_json(json.dumps(doc))


@pytest.mark.parametrize("algorithm", hashing.ALGORITHMS)
def test_chain_verifies_with_the_manifests_algorithm(tmp_path, algorithm):
    m = _manifest(algorithm)
    entry = m.files[0]
    liar = BytesTier("liar", DATA, "lie")
    good = BytesTier("server", DATA)
    cache = BlockCache(tmp_path / "c", 1 << 30)
    chain = FetchChain(cache, [liar, good], FetchStats(), HotBlocks(1 << 20), trio.CapacityLimiter(4), 2.0)
    assert trio.run(chain.block, m, entry, 1) == DATA[BS:2 * BS]
    assert liar.quarantined == [1]
    cache.close()


def test_an_old_cache_filled_under_sha256_reads_under_both_algorithms(tmp_path):
    old, new = _manifest("sha256"), _manifest("blake3")
    cache = BlockCache(tmp_path / "c", 1 << 30)
    down = BytesTier("server", DATA, "fail")
    chain = FetchChain(cache, [BytesTier("server", DATA)], FetchStats(), HotBlocks(1 << 20),
                       trio.CapacityLimiter(4), 2.0)
    trio.run(chain.block, old, old.files[0], 2)
    cache.close()
    for m in (old, new):  # a restarted daemon, the server away: the cached bytes verify under either
        cache = BlockCache(tmp_path / "c", 1 << 30)
        chain = FetchChain(cache, [down], FetchStats(), HotBlocks(1 << 20), trio.CapacityLimiter(4), 2.0)
        assert trio.run(chain.block, m, m.files[0], 2) == DATA[2 * BS:3 * BS]
        with pytest.raises(BlockUnavailable):
            trio.run(chain.block, m, m.files[0], 0)
        cache.close()


class HashClient:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.calls = 0

    def block_hashes(self, name, revision, path, first, count, lookahead=0):
        self.calls += 1
        return [hashing.block_digest(self.algorithm, DATA[i * BS:(i + 1) * BS]) for i in range(first, first + count)]


def test_node_hash_files_written_before_blake3_still_verify(tmp_path):
    entry = FileEntry("w.bin", len(DATA), "ab" * 32, ())
    old = Manifest("o/m", "a" * 40, BS, (entry,), block_hash="sha256")
    new = Manifest("o/m", "a" * 40, BS, (entry,), block_hash="blake3")
    folder = tmp_path / "manifests" / ".block-hashes"
    folder.mkdir(parents=True)
    (folder / f"{entry.sha256}-{BS}").write_bytes(struct.pack("<I32s", 1, hashlib.sha256(DATA[BS:2 * BS]).digest()))
    client = HashClient("blake3")
    hashes = BlockHashes(client, tmp_path, trio.CapacityLimiter(2))
    assert trio.run(hashes.get, old, entry, 1) == hashlib.sha256(DATA[BS:2 * BS]).digest()
    assert client.calls == 0  # the old file answered
    assert trio.run(hashes.get, new, entry, 1) == blake3.blake3(DATA[BS:2 * BS]).digest()
    assert client.calls == 1 and (folder / f"{entry.sha256}-{BS}-blake3").exists()


def test_server_store_hashes_a_block_once_and_sends_it_from_the_blob(tmp_path):
    pool = ThreadPoolExecutor(4)
    store = OriginBlocks(tmp_path / "ob", pool, 1 << 30)
    entry = FileEntry("w.bin", len(DATA), "cd" * 32, ())
    origin = Origin(DATA)
    try:
        for algorithm in ("sha256", "blake3"):
            digests = store.block_hashes(entry, BS, 1, 1, 0, origin.read, algorithm)
            assert digests == [hashing.block_digest(algorithm, DATA[BS:2 * BS])]
        assert len(origin.reads) == 2  # the store kept the bytes, but a new algorithm hashes them anew
        before = store.hashed
        for _ in range(5):
            store.hot.clear()
            with store.pinned_block(entry, BS, 1, origin.read, "blake3") as got:
                blob, offset, length = got
                assert (offset, length) == (BS, BS)
                assert store.store._pins[entry.key(1, BS)] == 1  # not evictable while it is sent
                with open(blob, "rb") as fh:
                    fh.seek(offset)
                    assert fh.read(length) == DATA[BS:2 * BS]
        assert store.hashed - before <= 1  # verified once when read back, then served as stored
        assert len(origin.reads) == 2
    finally:
        store.close()
        pool.shutdown()
