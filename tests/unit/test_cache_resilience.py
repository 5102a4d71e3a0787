"""The block cache under concurrency and failing disks: its bound holds, failures are misses."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb

from mxfs.cache.blocks import BlockCache
from mxfs.cache.faults import CacheFaults, reason_of
from mxfs.manifest.model import FileEntry

BS = 64 * 1024
THREADS = 8
BLOCKS_PER_THREAD = 40


def _allocated(root: Path) -> int:
    """Bytes the cache's blobs really occupy on disk (sparse files count their data only)."""
    return sum(p.stat().st_blocks * 512 for p in (root / "blobs").rglob("*") if p.is_file())


def test_eight_threads_cannot_push_the_cache_past_its_bound(tmp_path: Path) -> None:
    limit = 6 * BS
    cache = BlockCache(tmp_path / "c", limit)
    seen_over: list[int] = []

    def watch(added, removed) -> None:  # runs right after blocks are counted in
        if cache.used > limit:
            seen_over.append(cache.used)

    cache.listeners.append(watch)
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        entry = FileEntry(f"f{t}", BLOCKS_PER_THREAD * BS, f"{t:02x}" * 32)
        try:
            start.wait(timeout=30)
            for i in range(BLOCKS_PER_THREAD):
                cache.put(entry.key(i, BS), os.urandom(BS))
                if cache.used > limit:
                    seen_over.append(cache.used)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert not seen_over, f"cache went past its bound of {limit}: up to {max(seen_over)} bytes"
    assert cache.used <= limit
    assert cache.used == BS * len(cache.keys())  # the count matches what is indexed
    assert _allocated(tmp_path / "c") <= limit  # and what is on disk
    cache.close()


def test_a_full_index_map_is_a_skipped_write_not_an_error(tmp_path: Path) -> None:
    faults = CacheFaults()
    cache = BlockCache(tmp_path / "c", 1 << 30, index_bytes=64 * 1024, faults=faults)
    entry = FileEntry("f", 1000 * 4096, "ab" * 32)
    results = [cache.put(entry.key(i, 4096), b"z" * 4096) for i in range(1000)]
    assert results[0] and not all(results)  # some fit, then the map was full
    stored = results.count(True)
    assert len(cache.keys()) == stored and cache.used == stored * 4096
    assert faults.errors.labels("write", "map_full")._value.get() == 1000 - stored
    assert faults.degraded.labels("map_full")._value.get() == 1
    for i, ok in enumerate(results):  # whatever was stored reads back
        if ok:
            assert cache.read(entry.key(i, 4096), 4096) == b"z" * 4096
    cache.close()


def test_an_unreadable_blob_is_a_miss(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path / "c", 1 << 20)
    entry = FileEntry("f", 4 * BS, "cd" * 32)
    key = entry.key(0, BS)
    assert cache.put(key, b"a" * BS)
    blob = cache.blob_path(entry.sha256)
    blob.unlink()
    blob.mkdir()  # opening it now fails with EISDIR, as a broken file would with EIO
    assert cache.read(key, BS) is None
    assert not cache.contains(key) and cache.used == 0
    assert cache.faults.errors.labels("read", "EISDIR")._value.get() == 1
    assert not cache.put(key, b"a" * BS)  # and writing it is skipped, not raised
    assert cache.faults.errors.labels("write", "EISDIR")._value.get() == 1
    assert cache.used == 0
    cache.close()


def test_reasons_name_the_failure() -> None:
    assert reason_of(OSError(28, "full")) == "ENOSPC"
    assert reason_of(lmdb.MapFullError("full")) == "map_full"
