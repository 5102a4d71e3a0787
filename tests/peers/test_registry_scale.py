"""The holder registry on Redis with hundreds of simulated nodes: cost, memory, departures.

Prints announce / lookup cost and memory per node (run with ``-s`` to see them) and bounds them.
Liveness is a sorted set: lookups and the live list never SCAN the keyspace.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid

import pytest

from mxfs.block_peers.bitmap import BlockSet
from mxfs.registry.store import RedisStore
from mxfs.server.holders import ADDR, LIVE, HolderRegistry

NODES = 300
MODELS = 4
FILES_PER_MODEL = 8
BLOCKS_PER_FILE = 1200  # 4 MiB blocks: 4.7 GiB files, a 38 GiB model
BLOCK_SIZE = 4 << 20
#: per node: its liveness entry and address, ~2 models x 8 files of bitmaps and clean-up records
MAX_BYTES_PER_NODE = 24 * 1024
MAX_LOOKUP_MS = 25.0
MAX_ANNOUNCE_MS = 100.0


def _sha(model: int, f: int) -> str:
    return f"{model:032x}{f:032x}"


def _holdings(rng: random.Random) -> list[tuple[str, int, bytes]]:
    """Two of the models, each file complete or partly held (partial bitmaps compress badly)."""
    out = []
    for model in rng.sample(range(MODELS), 2):
        for f in range(FILES_PER_MODEL):
            held = range(BLOCKS_PER_FILE) if rng.random() < 0.5 else \
                rng.sample(range(BLOCKS_PER_FILE), rng.randrange(1, BLOCKS_PER_FILE))
            out.append((_sha(model, f), BLOCK_SIZE, BlockSet.of(held).encode()))
    return out


@pytest.fixture
def redis_registry(redis_server):
    import redis

    prefix = f"scale{uuid.uuid4().hex[:8]}:"
    store = RedisStore(redis_server.url, prefix=prefix)
    raw = redis.Redis.from_url(redis_server.url)
    yield store, raw, prefix
    for key in raw.scan_iter(match=prefix + "*", count=1000):
        raw.delete(key)
    raw.close()
    store.close()


def _record_bytes(raw, prefix: str) -> tuple[int, int]:
    """(keys, bytes by MEMORY USAGE) of every record under ``prefix``."""
    keys = list(raw.scan_iter(match=prefix + "*", count=1000))
    return len(keys), sum(raw.memory_usage(k, samples=0) or 0 for k in keys)


def test_hundreds_of_nodes_announce_look_up_and_leave(redis_registry):
    store, raw, prefix = redis_registry
    reg = HolderRegistry(store, ttl_s=30.0)
    rng = random.Random(12)
    used0 = raw.info("memory")["used_memory"]

    announce_ms = []
    for i in range(NODES):
        files = _holdings(rng)
        t = time.perf_counter()
        reg.announce(f"node-{i:04d}", f"10.1.{i // 250}.{i % 250}:8470", files, [f"org/m{i % MODELS}@main"], [])
        announce_ms.append((time.perf_counter() - t) * 1000)
    keys, record_bytes = _record_bytes(raw, prefix)
    used = raw.info("memory")["used_memory"] - used0
    assert raw.type(prefix + LIVE) == b"zset"

    raw.config_resetstat()
    lookup_ms = []
    holders_seen = []
    for _ in range(200):
        model, f = rng.randrange(MODELS), rng.randrange(FILES_PER_MODEL)
        t = time.perf_counter()
        found = reg.holders(_sha(model, f), BLOCK_SIZE)
        lookup_ms.append((time.perf_counter() - t) * 1000)
        holders_seen.append(len(found))
    t = time.perf_counter()
    live = reg.live_nodes()
    live_ms = (time.perf_counter() - t) * 1000
    stats = raw.info("commandstats")
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats  # nothing walks the keyspace
    assert len(live) == NODES

    per_node = record_bytes / NODES
    print(f"\nregistry on Redis, {NODES} nodes x 2 of {MODELS} models x {FILES_PER_MODEL} files "
          f"x {BLOCKS_PER_FILE} blocks: {keys} keys, {record_bytes / 1024:.0f} KiB by MEMORY USAGE "
          f"({per_node:.0f} B/node), used_memory +{used / 1024:.0f} KiB ({used / NODES:.0f} B/node)")
    print(f"announce (16 files): median {statistics.median(announce_ms):.2f} ms, "
          f"p95 {sorted(announce_ms)[int(0.95 * NODES)]:.2f} ms; lookup ({statistics.mean(holders_seen):.0f} "
          f"holders): median {statistics.median(lookup_ms):.2f} ms, max {max(lookup_ms):.2f} ms; "
          f"live list: {live_ms:.2f} ms")
    assert per_node <= MAX_BYTES_PER_NODE
    assert statistics.median(lookup_ms) <= MAX_LOOKUP_MS
    assert statistics.median(announce_ms) <= MAX_ANNOUNCE_MS
    assert min(holders_seen) >= NODES // MODELS  # every file is held by its models' nodes

    # a clean departure removes every record of the node, and nothing else
    gone = "node-0007"
    files_of_gone = {k for k in store.hgetall(f"holders:nodefiles:{gone}")}
    assert files_of_gone
    reg.withdraw(gone)
    assert gone not in reg.live_nodes()
    assert store.zscores(LIVE, [gone]) == [None] and store.hget(ADDR, gone) is None
    for key in files_of_gone:
        assert gone not in store.hgetall(f"holders:file:{key}")
    assert store.hgetall(f"holders:nodefiles:{gone}") == {}
    keys_after, bytes_after = _record_bytes(raw, prefix)
    assert bytes_after < record_bytes and keys_after == keys - 2  # its two clean-up hashes

    # a crash: no withdraw; the node leaves every answer at its expiry, its records at the reap
    short = HolderRegistry(store, ttl_s=0.3, reap_grace_s=0.0)
    short.announce("crashed", "10.9.9.9:8470", [(_sha(0, 0), BLOCK_SIZE, BlockSet.of([1]).encode())], [], [])
    assert "crashed" in {n for n, _, _ in reg.holders(_sha(0, 0), BLOCK_SIZE)}
    deadline = time.monotonic() + 5
    while "crashed" in {n for n, _, _ in reg.holders(_sha(0, 0), BLOCK_SIZE)}:
        assert time.monotonic() < deadline, "expired node still listed"
        time.sleep(0.05)
    short.reap(force=True)
    assert "crashed" not in store.hgetall(f"holders:file:{_sha(0, 0)}:{BLOCK_SIZE}")
    assert store.zscores(LIVE, ["crashed"]) == [None]
    assert len(reg.live_nodes()) == NODES - 1  # the reap took only the expired node
