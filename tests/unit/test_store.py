"""The registry store, same tests against the embedded (sqlite) and a real Redis backend."""

from __future__ import annotations

import pytest

from mxfs.demo import wait_for
from mxfs.registry.store import EmbeddedStore, open_store


def test_put_get_delete(store):
    assert store.get("a") is None
    store.put("a", b"1")
    assert store.get("a") == b"1"
    assert store.delete("a")
    assert store.get("a") is None


def test_ttl_expires(store):
    store.put("t", b"x", ttl_s=0.2)
    assert store.get("t") == b"x"
    wait_for(lambda: store.get("t") is None, 5, "the key to expire")


def test_put_if_absent_and_cas(store):
    assert store.put_if_absent("lease", b"me", ttl_s=5)
    assert not store.put_if_absent("lease", b"you", ttl_s=5)
    assert not store.compare_and_put("lease", b"you", b"you")
    assert store.compare_and_put("lease", b"me", b"you")
    assert store.get("lease") == b"you"
    assert store.compare_and_put("fresh", None, b"v")
    assert not store.compare_and_put("fresh", None, b"w")


def test_scan_prefix(store):
    for k in ("m/a", "m/b", "n/c"):
        store.put(k, k.encode())
    assert [k for k, _ in store.scan("m/")] == ["m/a", "m/b"]


def test_hashes_with_ttl(store):
    store.hset("h", {"f1": b"1", "f2": b"2"})
    assert store.hgetall("h") == {"f1": b"1", "f2": b"2"}
    assert store.hget("h", "f1") == b"1"
    assert store.hdel("h", "f1") == 1
    assert store.hgetall("h") == {"f2": b"2"}
    store.hset("g", {"x": b"y"}, ttl_s=0.2)
    wait_for(lambda: store.hgetall("g") == {}, 5, "the hash to expire")


def test_embedded_survives_reopen(tmp_path):
    s = EmbeddedStore(tmp_path / "r.sqlite3")
    s.put("k", b"v")
    s.close()
    s = EmbeddedStore(tmp_path / "r.sqlite3")
    assert s.get("k") == b"v"
    s.close()


def test_open_store_rejects_unknown_backend(tmp_path):
    with pytest.raises(ValueError, match="unknown metadata backend"):
        open_store(tmp_path, backend="etcd")
    with pytest.raises(ValueError, match="REDIS_URL"):
        open_store(tmp_path, backend="redis", redis_url="")
