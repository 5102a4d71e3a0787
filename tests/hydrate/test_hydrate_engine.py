"""The hydration engine without a kernel mount: real cache files and lmdb, in-process tiers,
a real server process, a real small tmpfs for ENOSPC."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks
from mxfs.errors import BlockUnavailable
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.hydrate import CacheFull, Hydrator, Progress
from mxfs.fetch.server import ServerTier
from mxfs.fetch.stats import FetchStats
from mxfs.manifest import hashing
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.rpc.client import MxfsClient
from tests.conftest import MODEL
from tests.support.needs import missing
from tests.unit.test_cache_chain import BytesTier

BS = 64 * 1024
DATA = os.urandom(20 * BS + 123)  # 21 blocks, the last one short


def _manifest(algorithm: str = "blake3") -> Manifest:
    blocks = tuple(hashing.block_digest(algorithm, DATA[i:i + BS]) for i in range(0, len(DATA), BS))
    files = (FileEntry("w.bin", len(DATA), hashlib.sha256(DATA).hexdigest(), blocks),
             FileEntry("empty", 0, hashlib.sha256(b"").hexdigest()))
    return Manifest("o/m", "a" * 40, BS, files, block_hash=algorithm)


class IntoTier(BytesTier):
    """A tier that writes straight into the blob being hydrated (like the server tier)."""

    def __init__(self, name: str, data: bytes, mode: str = "ok", fail_blocks: frozenset[int] = frozenset()) -> None:
        super().__init__(name, data, mode)
        self.fail_blocks = fail_blocks
        self.active = 0
        self.peak = 0

    async def fetch_to_file(self, manifest, entry, index, fd, write_lock, check):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if index in self.fail_blocks:
                raise BlockUnavailable("not this one")
            data = await self.fetch(manifest, entry, index)
            with write_lock:
                os.pwrite(fd, data, entry.block_span(index, manifest.block_size)[0])
            return check()
        finally:
            self.active -= 1


def _chain(root: Path, tiers, limit: int = 1 << 30) -> FetchChain:
    return FetchChain(BlockCache(root, limit), tiers, FetchStats(), HotBlocks(1 << 20), trio.CapacityLimiter(4), 5.0)


@pytest.mark.parametrize("algorithm", hashing.ALGORITHMS)
def test_hydrates_in_place_in_parallel_from_several_tiers_and_records_completion(tmp_path, algorithm):
    m = _manifest(algorithm)
    entry = m.file("w.bin")
    peer = BytesTier("peer", DATA, "lie")  # a lying first tier is skipped block by block
    server = IntoTier("server", DATA, fail_blocks=frozenset({3}))
    origin = BytesTier("origin", DATA)
    chain = _chain(tmp_path / "c", [peer, server, origin])
    cache = chain.cache
    cache.put(entry.key(5, BS), DATA[5 * BS:6 * BS])  # a block a reader cached before: kept, not refetched
    hydrator = Hydrator(chain, concurrency=6)
    progress = Progress()
    assert cache.complete_blob(entry, BS) is None
    failed = trio.run(hydrator.hydrate, m, progress)
    assert failed == []
    assert cache.is_complete(entry, BS) and progress.complete_files == 2
    assert progress.done_bytes == progress.total_bytes == len(DATA) and progress.done_blocks == 21
    blob = cache.complete_blob(entry, BS)
    assert blob is not None and blob.read_bytes() == DATA  # a plain file with exactly the bytes
    assert os.stat(blob).st_blocks * 512 >= len(DATA)  # preallocated: no holes
    assert server.peak > 1  # blocks in parallel
    assert hydrator.in_place_blocks == 19  # all but block 3 (from the origin) and block 5 (cached)
    assert sorted(peer.quarantined) == [i for i in range(21) if i != 5]
    assert server.calls == 19 and origin.calls == 1
    # complete is cleared as soon as any block leaves the cache
    cache.discard(entry.key(7, BS))
    assert not cache.is_complete(entry, BS) and cache.complete_blob(entry, BS) is None
    cache.close()


def test_completion_survives_a_restart_and_no_block_is_fetched_again(tmp_path):
    m = _manifest()
    entry = m.file("w.bin")
    chain = _chain(tmp_path / "c", [IntoTier("server", DATA)])
    assert trio.run(Hydrator(chain).hydrate, m) == []
    chain.cache.close()
    again = _chain(tmp_path / "c", [IntoTier("server", DATA, "fail")])
    assert again.cache.is_complete(entry, BS)
    assert trio.run(Hydrator(again).hydrate, m) == []
    again.cache.close()


def test_bad_bytes_from_every_tier_never_complete_a_file(tmp_path):
    m = _manifest()
    entry = m.file("w.bin")
    chain = _chain(tmp_path / "c", [IntoTier("server", DATA, "lie")])
    failed = trio.run(Hydrator(chain).hydrate, m)
    assert len(failed) == 1 and "bad bytes" in failed[0]
    assert not chain.cache.is_complete(entry, BS) and not chain.cache.contains(entry.key(0, BS))
    chain.cache.close()


def test_a_reader_waits_for_a_block_being_hydrated_and_gets_verified_bytes(tmp_path):
    m = _manifest()
    entry = m.file("w.bin")
    server = IntoTier("server", DATA)
    chain = _chain(tmp_path / "c", [server])
    got: list[bytes] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Hydrator(chain, concurrency=2).hydrate_file, m, entry)
            await trio.sleep(0.005)  # the hydrator holds blocks 0 and 1 now
            got.append(bytes(await chain.block(m, entry, 1)))

    trio.run(main)
    assert got == [DATA[BS:2 * BS]]
    assert server.calls == 21  # the reader shared the hydrator's fetch
    assert chain.cache.is_complete(entry, BS)
    chain.cache.close()


@pytest.fixture
def small_tmpfs(tmp_path):
    root = tmp_path / "tmpfs"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                      capture_output=True).returncode != 0:
        missing("tmpfs", "cannot mount a tmpfs here (needs root)")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


def test_enospc_never_produces_a_complete_looking_blob(small_tmpfs):
    big = os.urandom(48 * BS)  # 3 MiB into a 2 MiB filesystem
    blocks = tuple(hashing.block_digest("blake3", big[i:i + BS]) for i in range(0, len(big), BS))
    entry = FileEntry("big.bin", len(big), hashlib.sha256(big).hexdigest(), blocks)
    m = Manifest("o/m", "a" * 40, BS, (entry,), block_hash="blake3")
    chain = _chain(small_tmpfs / "c", [IntoTier("server", big)], limit=1 << 30)
    with pytest.raises(CacheFull, match="no space"):
        trio.run(Hydrator(chain).hydrate_file, m, entry)
    assert not chain.cache.is_complete(entry, BS) and chain.cache.complete_blob(entry, BS) is None
    assert not any(chain.cache.contains(entry.key(i, BS)) for i in range(48))
    assert not chain.cache.blob_path(entry.sha256).exists()  # the failed blob holds no space
    # a file that fits still hydrates on the same filesystem
    small = _manifest()
    chain = FetchChain(chain.cache, [IntoTier("server", DATA)], FetchStats(), HotBlocks(1 << 20),
                       trio.CapacityLimiter(4), 5.0)
    assert trio.run(Hydrator(chain).hydrate, small) == []
    assert chain.cache.complete_blob(small.file("w.bin"), BS).read_bytes() == DATA
    chain.cache.close()


class KillingTier(ServerTier):
    """The real server tier; the server process is killed after ``after`` blocks arrived."""

    def __init__(self, *args, server, after: int) -> None:
        super().__init__(*args)
        self.server, self.after, self.received = server, after, 0

    async def fetch_to_file(self, manifest, entry, index, fd, write_lock, check):
        ok = await super().fetch_to_file(manifest, entry, index, fd, write_lock, check)
        self.received += 1
        if self.received == self.after:
            self.server.stop(kill=True)
        return ok


def test_a_server_that_vanishes_mid_hydration_leaves_an_incomplete_file_that_resumes(tmp_path, start_server,
                                                                                     origin_hashes):
    server = start_server()
    client = MxfsClient(server.address, timeout_s=5)
    m = client.get_manifest(MODEL)
    assert m.block_hash == "blake3"
    entry = max(m.files, key=lambda f: f.size)
    limiter = trio.CapacityLimiter(4)
    tier = KillingTier(client, limiter, 2.0, server=server, after=3)
    chain = _chain(tmp_path / "c", [tier])
    with pytest.raises(BlockUnavailable):
        trio.run(Hydrator(chain, concurrency=2).hydrate_file, m, entry)
    assert 3 <= tier.received < entry.block_count(m.block_size)  # the server died part-way through the file
    cache = chain.cache
    held = [i for i in range(entry.block_count(m.block_size)) if cache.contains(entry.key(i, m.block_size))]
    assert len(held) <= tier.received  # only blocks that arrived whole and verified
    assert not cache.is_complete(entry, m.block_size) and cache.complete_blob(entry, m.block_size) is None
    client.close()

    server.start()  # back on the same port: hydration resumes with the blocks it has
    client = MxfsClient(server.address, timeout_s=5)
    chain = FetchChain(cache, [ServerTier(client, limiter, 5.0)], FetchStats(), HotBlocks(1 << 20), limiter, 5.0)
    assert trio.run(Hydrator(chain).hydrate, m) == []
    blob = cache.complete_blob(entry, m.block_size)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == origin_hashes[entry.path]
    client.close()
    cache.close()


def test_a_slow_tier_hands_over_to_the_next_after_its_hedge_time(tmp_path):
    m = _manifest()
    slow = BytesTier("peer", DATA, "stall")
    slow.hedge_after = lambda: 0.05
    chain = _chain(tmp_path / "c", [slow, IntoTier("server", DATA)])
    start = time.monotonic()
    assert trio.run(Hydrator(chain, concurrency=8).hydrate, m) == []
    assert time.monotonic() - start < 30  # the stalled tier would take 60 s per block
    assert chain.cache.is_complete(m.file("w.bin"), BS) and chain.stats.snapshot()["bytes"]["server"] == len(DATA)
    chain.cache.close()


def test_a_block_a_reader_fetched_meanwhile_lands_before_the_file_is_recorded(tmp_path):
    """The job joins a reader's flight for a block; that block reaches the cache through the
    chain's background writes, which hydration waits for before it checks completion."""
    m = _manifest()
    entry = m.file("w.bin")

    class SlowReads(IntoTier):
        async def fetch(self, manifest, entry, index):  # the reader's path: slow
            await trio.sleep(0.2)
            return await BytesTier.fetch(self, manifest, entry, index)

        async def fetch_to_file(self, manifest, entry, index, fd, write_lock, check):  # hydration's: fast
            os.pwrite(fd, await BytesTier.fetch(self, manifest, entry, index),
                      entry.block_span(index, manifest.block_size)[0])
            return check()

    chain = _chain(tmp_path / "c", [SlowReads("server", DATA)])
    store = chain._store

    def slow_store(key, data):  # and a slow disk under the reader's background write
        time.sleep(0.3)
        store(key, data)

    chain._store = slow_store

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            chain.start(nursery)
            nursery.start_soon(chain.block, m, entry, 0)  # a reader's fetch of block 0, in flight
            await trio.sleep(0.05)
            await Hydrator(chain, concurrency=4).hydrate_file(m, entry)  # joins that flight
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert chain.cache.is_complete(entry, BS)
    chain.cache.close()
