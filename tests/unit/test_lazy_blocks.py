"""Lazy remote files without a kernel: manifest/proto fields, the node's hash source with the
fetch chain, and the server's origin block store (single flight, corrupt store, pinned bytes)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks
from mxfs.errors import BlockUnavailable, IntegrityError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.hashes import BlockHashes
from mxfs.fetch.stats import FetchStats
from mxfs.manifest import hashing
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.origins.remote import OriginUnavailable
from mxfs.rpc.convert import manifest_from_pb, manifest_to_pb
from mxfs.server.origin_blocks import OriginBlocks
from tests.unit.test_cache_chain import BytesTier

BS = 64 * 1024
DATA = bytes(range(256)) * 1024 + b"tail"  # 5 blocks, the last one short
DIGESTS = [hashlib.sha256(DATA[i:i + BS]).digest() for i in range(0, len(DATA), BS)]
PIN = hashlib.sha256(b"s3://b/p\0o/m\0w.bin").hexdigest()


def _lazy_manifest(verified: bool = False) -> Manifest:
    sha = hashlib.sha256(DATA).hexdigest() if verified else PIN
    return Manifest("o/m", "a" * 40, BS, (FileEntry("w.bin", len(DATA), sha, (), (), digest_verified=verified),
                                          FileEntry("empty", 0, hashlib.sha256(b"").hexdigest())))


def test_lazy_entries_round_trip_json_and_proto():
    m = _lazy_manifest()
    f = m.file("w.bin")
    assert f.lazy and not f.digest_verified and not m.file("empty").lazy
    assert Manifest.from_json(m.to_json()) == m
    assert manifest_from_pb(manifest_to_pb(m)) == m
    plain = Manifest("o/m", "a" * 40, BS, (FileEntry("x", 3, "0" * 64, (b"h" * 32,)),))
    assert "digest_verified" not in plain.to_json() and Manifest.from_json(plain.to_json()) == plain


class FakeClient:
    """GetBlockHashes against in-memory digests; counts calls; can be 'down'."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.down = False
        self.known: set[int] = set()

    def block_hashes(self, name, revision, path, first, count, lookahead=0):
        if self.down:
            raise BlockUnavailable("server down")
        time.sleep(0.02)
        self.calls.append((first, count, lookahead))
        self.known.update(range(first, first + count))
        end = min(len(DIGESTS), first + count + lookahead)
        return [DIGESTS[i] if i in self.known else b"" for i in range(first, end)]


def test_chain_verifies_lazy_blocks_with_hashes_from_the_server_and_remembers_them(tmp_path):
    m = _lazy_manifest()
    entry = m.file("w.bin")
    client = FakeClient()
    liar = BytesTier("liar", DATA, "lie")
    good = BytesTier("server", DATA)

    async def main(chain: FetchChain) -> None:
        async with trio.open_nursery() as n:
            for _ in range(4):  # concurrent readers of one block: one hash request
                n.start_soon(chain.block, m, entry, 2)
        assert client.calls == [(2, 1, 2)]
        assert await chain.block(m, entry, 4) == DATA[4 * BS:]
        assert liar.quarantined == [2, 4]  # bad bytes were caught with the server's hashes

    cache = BlockCache(tmp_path / "c", 1 << 30)
    hashes = BlockHashes(client, tmp_path, trio.CapacityLimiter(4))
    chain = FetchChain(cache, [liar, good], FetchStats(), HotBlocks(1 << 20), trio.CapacityLimiter(4), 2.0,
                       hashes=hashes)
    trio.run(main, chain)
    cache.close()

    # a restarted daemon with the server away still verifies what it cached
    client.down = True
    cache = BlockCache(tmp_path / "c", 1 << 30)
    hashes = BlockHashes(client, tmp_path, trio.CapacityLimiter(4))
    chain = FetchChain(cache, [BytesTier("server", DATA, "fail")], FetchStats(), HotBlocks(1 << 20),
                       trio.CapacityLimiter(4), 2.0, hashes=hashes)

    async def again() -> None:
        assert await chain.block(m, entry, 2) == DATA[2 * BS:3 * BS]
        with pytest.raises(BlockUnavailable, match="server down"):
            await chain.block(m, entry, 0)

    trio.run(again)
    cache.close()


def test_chain_without_a_hash_source_refuses_lazy_entries(tmp_path):
    from mxfs.errors import InvalidModelName

    m = _lazy_manifest()
    chain = FetchChain(BlockCache(tmp_path / "c", 1 << 30), [BytesTier("s", DATA)], FetchStats(),
                       HotBlocks(1 << 20), trio.CapacityLimiter(4), 2.0)
    with pytest.raises(InvalidModelName, match="no block hashes"):
        trio.run(chain.block, m, m.file("w.bin"), 0)


class Origin:
    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        time.sleep(0.02)
        with self._lock:
            self.reads.append((offset, length))
        return bytes(self.data[offset:offset + length])


@pytest.fixture
def store(tmp_path):
    pool = ThreadPoolExecutor(8)
    moved: list[int] = []
    s = OriginBlocks(tmp_path / "ob", pool, 1 << 30, moved.append)
    yield s
    s.close()
    pool.shutdown()


def test_origin_blocks_single_flight_ranges_and_restart(tmp_path):
    entry = _lazy_manifest().file("w.bin")
    origin = Origin(DATA)
    pool = ThreadPoolExecutor(8)
    moved: list[int] = []
    store = OriginBlocks(tmp_path / "ob", pool, 1 << 30, moved.append)
    with ThreadPoolExecutor(6) as ex:
        outs = list(ex.map(lambda _: store.block_hashes(entry, BS, 1, 2, 2, origin.read), range(6)))
    assert all(o == [*DIGESTS[1:3], b"", b""] for o in outs)
    assert sorted(origin.reads) == [(BS, BS), (2 * BS, BS)]  # each asked block once
    assert store.read_range(entry, BS, BS + 5, BS, origin.read) == DATA[BS + 5:2 * BS + 5]
    assert len(origin.reads) == 2 and sum(moved) == 2 * BS
    assert store.read_range(entry, BS, 4 * BS, len(DATA) - 4 * BS, origin.read) == DATA[4 * BS:]
    assert len(origin.reads) == 3
    store.close()
    again = OriginBlocks(tmp_path / "ob", pool, 1 << 30)
    assert again.block_hashes(entry, BS, 1, 2, 2, origin.read) == [*DIGESTS[1:3], b"", DIGESTS[4]]
    assert len(origin.reads) == 3  # hashes survived the restart
    again.close()
    pool.shutdown()


def test_origin_blocks_corrupt_store_and_changed_origin(store):
    entry = _lazy_manifest().file("w.bin")
    origin = Origin(DATA)
    store.block(entry, BS, 0, origin.read)
    key = entry.key(0, BS)
    store.hot.clear()
    fd = os.open(store.store.blob_path(key.sha256), os.O_WRONLY)
    os.pwrite(fd, b"\xff" * 10, 0)
    os.close(fd)
    assert store.block(entry, BS, 0, origin.read) == DATA[:BS]  # corrupt copy dropped, read again
    assert len(origin.reads) == 2
    store.hot.clear()
    store.store.discard(key)
    origin.data[0] ^= 0xFF  # the pinned object changed under us
    with pytest.raises(IntegrityError, match="changed"):
        store.block(entry, BS, 0, origin.read)


def test_origin_blocks_fill_verifies_the_published_digest(store):
    good = _lazy_manifest(verified=True).file("w.bin")
    done: list[int] = []
    store.fill(good, BS, Origin(DATA).read, 2, done.append)
    assert sum(done) == len(DATA) and store.hashes.is_verified(good.sha256, BS)
    lying = FileEntry("w.bin", len(DATA), hashlib.sha256(b"other").hexdigest(), ())
    with pytest.raises(IntegrityError, match="published sha256"):
        store.fill(lying, BS, Origin(DATA).read, 2, lambda _n: None)
    assert store.present_bytes(lying, BS) == 0  # forgotten, to be read again


BIG = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(32 * BS // 32))  # 32 blocks


class RecordingPool(ThreadPoolExecutor):
    """Remembers every block asked of the origin (runs are submitted before an ask returns)."""

    def __init__(self, workers: int = 8) -> None:
        super().__init__(workers)
        self.asked: list[int] = []

    def submit(self, fn, /, *args, **kwargs):
        if getattr(fn, "__name__", "") == "_fetch_run":
            self.asked += args[2]
        return super().submit(fn, *args, **kwargs)


def test_origin_blocks_read_one_window_ahead_of_a_hydration_only(tmp_path):
    entry = FileEntry("big.bin", len(BIG), "12" * 32, ())
    origin = Origin(BIG)
    pool = RecordingPool()
    store = OriginBlocks(tmp_path / "ob", pool, 1 << 30)
    try:
        for first in (0, 1, 2, 3):  # one block at a time (a reader): never more than asked
            store.block_hashes(entry, BS, first, 1, 2, origin.read)
        assert pool.asked == [0, 1, 2, 3]
        store.block_hashes(entry, BS, 4, 8, 0, origin.read)  # a hydration's first window: nothing follows yet
        assert pool.asked == list(range(12))
        store.block_hashes(entry, BS, 12, 8, 0, origin.read)  # the next window: the one after it is read too
        assert pool.asked == list(range(28))
        assert store.block_hashes(entry, BS, 20, 8, 0, origin.read) == [
            hashing.block_digest(hashing.LEGACY, BIG[i * BS:(i + 1) * BS]) for i in range(20, 28)]
        assert pool.asked == list(range(32))  # read ahead to the end of the file, each block once
        store.block_hashes(entry, BS, 1, 8, 0, origin.read)  # a jump back: known, nothing read
        store.block_hashes(entry, BS, 28, 4, 0, origin.read)  # joins the reads ahead
        assert pool.asked == list(range(32))
        assert sorted(i for off, n in origin.reads for i in range(off // BS, (off + n) // BS)) == list(range(32))
    finally:
        store.close()
        pool.shutdown()


def test_origin_blocks_sends_a_fresh_block_from_memory_then_the_checked_store(store):
    entry = _lazy_manifest().file("w.bin")
    origin = Origin(DATA)
    store.block_hashes(entry, BS, 1, 1, 0, origin.read)
    hashed = store.hashed
    with store.pinned_block(entry, BS, 1, origin.read) as got:
        assert isinstance(got, memoryview) and bytes(got) == DATA[BS:2 * BS]
    assert store.hashed == hashed  # no second hash for a block in memory
    store.hot.clear()
    with store.pinned_block(entry, BS, 1, origin.read) as got:
        blob, offset, length = got
        with open(blob, "rb") as fh:
            fh.seek(offset)
            assert fh.read(length) == DATA[BS:2 * BS]
    assert store.hashed == hashed + 1 and len(origin.reads) == 1  # checked once as read back


def test_origin_blocks_write_through_the_page_cache_where_o_direct_is_refused(store, monkeypatch):
    import errno

    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    entry = _lazy_manifest().file("w.bin")
    store.blocks(entry, BS, range(5), Origin(DATA).read, keep=False)
    monkeypatch.undo()
    assert not store.direct_io
    assert store.store.blob_path(entry.sha256).read_bytes() == DATA
    assert all(store.store.contains(entry.key(i, BS)) for i in range(5))


def test_origin_blocks_waiters_are_released_when_the_pool_stops(tmp_path):
    """Reads queued behind busy workers are cancelled by a shutdown: their askers get an error."""
    entry = FileEntry("big.bin", len(BIG), "34" * 32, ())
    gate, started = threading.Event(), threading.Event()

    def slow(offset: int, length: int) -> bytes:
        started.set()
        gate.wait(10)
        return BIG[offset:offset + length]

    pool = RecordingPool(workers=1)
    store = OriginBlocks(tmp_path / "ob", pool, 1 << 30)
    errors: list[BaseException] = []

    def ask(first: int) -> None:
        try:
            store.block_hashes(entry, BS, first, 1, 0, slow)
        except BaseException as exc:  # the test looks at what arrived
            errors.append(exc)

    askers = [threading.Thread(target=ask, args=(i,), daemon=True) for i in (0, 5)]
    for t in askers:
        t.start()
    _wait_for(lambda: started.is_set() and sorted(pool.asked) == [0, 5], "a read running, another queued")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    for t in askers:
        t.join(10)
    assert not any(t.is_alive() for t in askers)
    assert len(errors) == 1 and isinstance(errors[0], OriginUnavailable)
    store.close()


def _wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
