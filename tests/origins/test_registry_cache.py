"""Model registry (embedded and Redis), download leases, crash recovery, pinning and eviction."""

from __future__ import annotations

import threading
import time

import pytest

from mxfs.demo import wait_for
from mxfs.errors import ModelNotFound
from mxfs.origins.hf import HuggingFaceSource
from mxfs.registry.store import EmbeddedStore, RedisStore
from mxfs.server.model_cache import HydratingOrigin, ModelCache
from mxfs.server.models_registry import EvictionPolicy, ModelRecord, ModelRegistry, Status, select_victims
from tests.conftest import BLOCK_SIZE


@pytest.fixture(params=["embedded", "redis"])
def store_factory(request, tmp_path):
    """Returns a function opening a new handle on one shared store (like a second replica)."""
    opened = []
    if request.param == "embedded":
        def factory():
            opened.append(EmbeddedStore(tmp_path / "registry.sqlite3"))
            return opened[-1]
    else:
        url, prefix = request.getfixturevalue("redis_server").url, f"t{time.monotonic_ns()}:"

        def factory():
            opened.append(RedisStore(url, prefix=prefix))
            return opened[-1]
    yield factory
    for s in opened:
        s.close()


def _files(n: int = 3, size: int = 300_000) -> dict[str, bytes]:
    import os

    return {"config.json": b'{"n": %d}' % n, **{f"w{i}.safetensors.bin": os.urandom(size) for i in range(n)}}


def test_lease_takeover_and_no_stuck_downloading(store_factory):
    a = ModelRegistry(store_factory(), "replica-a", lease_ttl_s=1.0)
    b = ModelRegistry(store_factory(), "replica-b", lease_ttl_s=1.0)
    lease = a.acquire("o/m", "r" * 40)
    assert lease is not None and b.acquire("o/m", "r" * 40) is None
    a.set_status("o/m", "r" * 40, Status.DOWNLOADING)
    past_ttl = time.monotonic() + 1.5
    while time.monotonic() < past_ttl:  # renewed in the background: owned throughout, past its TTL
        assert b.acquire("o/m", "r" * 40) is None and b.get("o/m", "r" * 40).status is Status.DOWNLOADING
        time.sleep(0.1)
    lease._stop.set()  # replica a "crashes": renewals stop, nothing is released
    wait_for(lambda: b.get("o/m", "r" * 40).status is Status.ERROR, 10, "the dead lease to expire")
    rec = b.get("o/m", "r" * 40)
    assert rec.status is Status.ERROR and "interrupted" in rec.message
    taken = b.acquire("o/m", "r" * 40)
    assert taken is not None
    taken.release()
    again = a.acquire("o/m", "r" * 40)
    assert again is not None
    again.release()


def test_select_victims_lru_count_age_space():
    now = 1000.0
    recs = [ModelRecord(f"o/m{i}", "r" * 40, Status.DOWNLOADED, size=10, last_used=now - i * 100) for i in range(4)]
    recs.append(ModelRecord("o/busy", "r" * 40, Status.DOWNLOADING, size=10, last_used=0))
    key = lambda rs: [r.name for r in rs]  # noqa: E731
    assert key(select_victims(recs, EvictionPolicy(max_models=2), now, 10**9)) == ["o/m3", "o/m2"]
    assert key(select_victims(recs, EvictionPolicy(max_unused_s=150), now, 10**9)) == ["o/m3", "o/m2"]
    assert key(select_victims(recs, EvictionPolicy(min_free_bytes=25), now, 10)) == ["o/m3", "o/m2"]
    assert select_victims(recs, EvictionPolicy(), now, 0) == []


def test_replicas_share_redis_registry_and_cache(hub, redis_server, tmp_path):
    hub.add_commit("o/m", _files())
    src = HuggingFaceSource()
    url, prefix = redis_server.url, f"t{time.monotonic_ns()}:"
    one = ModelCache(tmp_path, ModelRegistry(RedisStore(url, prefix), "one"))
    manifest = HydratingOrigin(src, one).resolve("o/m", "main", BLOCK_SIZE)
    sent = sum(hub.bytes_sent.values())
    one.close()
    # a restarted server, and a second replica on the same shared cache: no origin traffic
    two = ModelCache(tmp_path, ModelRegistry(RedisStore(url, prefix), "two"))
    assert two.registry.get("o/m", manifest.revision).status is Status.DOWNLOADED
    assert HydratingOrigin(src, two).resolve("o/m", "main", BLOCK_SIZE) == manifest
    assert sum(hub.bytes_sent.values()) == sent
    two.close()


def test_second_replica_waits_for_the_lease_holder(hub, tmp_path):
    commit = hub.add_commit("o/m", _files(2, 2_000_000))
    store = EmbeddedStore(tmp_path / "r.sqlite3")
    one = ModelCache(tmp_path, ModelRegistry(store, "one"), workers=1, part_size=256 * 1024)
    two = ModelCache(tmp_path, ModelRegistry(store, "two"))
    src = HuggingFaceSource()
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("one", HydratingOrigin(src, one).resolve(
        "o/m", "main", BLOCK_SIZE)))
    t.start()
    wait_for(lambda: one.registry.holder("o/m", commit) == "one" or "one" in results, 30, "replica one's lease")
    results["two"] = HydratingOrigin(src, two).resolve("o/m", "main", BLOCK_SIZE)
    t.join(30)
    assert results["one"] == results["two"]
    assert sum(hub.bytes_sent.values()) == sum(len(v) for v in _files(2, 2_000_000).values())
    one.close()
    two.close()


def test_revision_pinning_when_the_branch_moves(hub, tmp_path):
    first, second = _files(1), _files(2)
    c1 = hub.add_commit("o/m", first)
    cache = ModelCache(tmp_path, ModelRegistry(EmbeddedStore()))
    origin = HydratingOrigin(HuggingFaceSource(), cache)
    m1 = origin.resolve("o/m", "main", BLOCK_SIZE)
    c2 = hub.add_commit("o/m", second)
    m2 = origin.resolve("o/m", "main", BLOCK_SIZE)
    assert (m1.revision, m2.revision) == (c1, c2)
    pinned = origin.resolve("o/m", c1, BLOCK_SIZE)
    assert pinned == m1
    for path, data in first.items():
        assert origin.read_range(pinned, path, 0, len(data)) == data
    cache.close()


def test_eviction_frees_disk_and_models_come_back(hub, tmp_path):
    for i in range(3):
        hub.add_commit(f"o/m{i}", _files(1, 1_000_000))
    cache = ModelCache(tmp_path, ModelRegistry(EmbeddedStore()), EvictionPolicy(max_models=1))
    origin = HydratingOrigin(HuggingFaceSource(), cache)
    manifests = [origin.resolve(f"o/m{i}", "main", BLOCK_SIZE) for i in range(3)]
    for m in manifests:
        cache.registry.touch(m.name, m.revision, time.time() + manifests.index(m))
    evicted = cache.evictor.run_once()
    assert len(evicted) == 2
    kept = [m for m in manifests if cache.dir(m.name, m.revision).exists()]
    assert [m.name for m in kept] == ["o/m2"]
    assert not cache.dir("o/m0", manifests[0].revision).exists()
    data = origin.read_range(manifests[0], "w0.safetensors.bin", 0, 1000)  # re-hydrated on demand
    assert data == hub.repos["o/m0"].commits[manifests[0].revision]["w0.safetensors.bin"][:1000]
    cache.close()


def test_origin_dying_mid_file_publishes_nothing(hub, tmp_path):
    hub.add_commit("o/m", _files(1, 3_000_000))
    hub.cut_after["w0.safetensors.bin"] = 1000
    cache = ModelCache(tmp_path, ModelRegistry(EmbeddedStore()), part_size=1 << 20)
    origin = HydratingOrigin(HuggingFaceSource(), cache)
    with pytest.raises(Exception, match=r"closed|failed while sending"):
        origin.resolve("o/m", "main", BLOCK_SIZE)
    snap = origin.snapshot("o/m", "main")
    base = cache.dir("o/m", snap.revision)
    assert not (base / "files" / "w0.safetensors.bin").exists()
    assert cache.cached("o/m", snap.revision, BLOCK_SIZE) is None
    assert cache.registry.get("o/m", snap.revision).status is Status.ERROR
    del hub.cut_after["w0.safetensors.bin"]
    assert origin.resolve("o/m", "main", BLOCK_SIZE).revision == snap.revision  # recovers
    cache.close()


def test_clear_errors_for_missing_models_and_revisions(hub, tmp_path):
    hub.add_commit("o/m", _files(1))
    origin = HydratingOrigin(HuggingFaceSource(), ModelCache(tmp_path, ModelRegistry(EmbeddedStore())))
    with pytest.raises(ModelNotFound, match="not found"):
        origin.resolve("o/none", "main", BLOCK_SIZE)
    with pytest.raises(ModelNotFound, match="revision 'v9'"):
        origin.resolve("o/m", "v9", BLOCK_SIZE)
    origin.cache.close()
