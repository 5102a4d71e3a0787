"""SourceRegistry on both real stores: publish, list, metadata, heartbeat, STALE, reaping."""

from __future__ import annotations

import dataclasses
import time

import pytest

from mxfs.demo import wait_for
from mxfs.weight_sources.errors import SourceGone
from mxfs.weight_sources.model import SourceIdentity, SourceInfo, Status
from mxfs.weight_sources.registry import SourceRegistry

IDENT = SourceIdentity("org/m", "a" * 40, "bfloat16", tp_size=2, rank=1, backend_version="0.32.0")


def info(source_id: str, identity: SourceIdentity = IDENT, status: Status = Status.READY) -> SourceInfo:
    return SourceInfo(source_id, identity, status, f"mx-{source_id}", "host", 3, 300)


def test_publish_list_metadata_unpublish(store):
    reg = SourceRegistry(store, stale_s=30, reap_s=60)
    reg.publish(info("s1"), b"agent-md", b"manifest")
    reg.publish(info("s2", status=Status.PENDING), b"md2", b"m2")
    reg.publish(info("s3", dataclasses.replace(IDENT, rank=0)), b"md3", b"m3")
    assert [s.source_id for s in reg.list(IDENT)] == ["s1"]
    assert {s.source_id for s in reg.list(IDENT, include_stale=True)} == {"s1", "s2"}
    got, agent, manifest = reg.metadata("s1")
    assert (got.identity, got.agent_name, agent, manifest) == (IDENT, "mx-s1", b"agent-md", b"manifest")
    assert reg.set_status("s2", Status.READY).status is Status.READY
    assert {s.source_id for s in reg.list(IDENT)} == {"s1", "s2"}
    assert reg.unpublish("s1") and not reg.unpublish("s1")
    with pytest.raises(SourceGone):
        reg.metadata("s1")
    with pytest.raises(SourceGone):
        reg.heartbeat("s1")


def test_stale_then_reaped_and_heartbeat_keeps_alive(store):
    reg = SourceRegistry(store, stale_s=0.5, reap_s=3.0)
    reg.publish(info("dead"), b"md", b"m")
    reg.publish(info("alive"), b"md", b"m")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        reg.heartbeat("alive")
        time.sleep(0.1)
    assert [s.source_id for s in reg.list(IDENT)] == ["alive"]
    stale = {s.source_id: s.status for s in reg.list(IDENT, include_stale=True)}
    assert stale == {"alive": Status.READY, "dead": Status.STALE}
    # both reaped: 'alive' stopped beating too
    wait_for(lambda: reg.list(IDENT, include_stale=True) == [], 10, "both sources to be reaped")
    with pytest.raises(SourceGone):
        reg.heartbeat("dead")


def test_heartbeat_does_not_rewrite_the_metadata(store):
    reg = SourceRegistry(store, stale_s=5, reap_s=10)
    big = b"x" * (1 << 20)
    reg.publish(info("s"), big, big)
    store.hset("p2p/md/s", {"agent": b"marker"})  # a rewrite would restore the original bytes
    reg.heartbeat("s")
    assert reg.metadata("s")[1] == b"marker"


def test_restarted_worker_never_matches_its_dead_entry(store):
    reg = SourceRegistry(store, stale_s=0.3, reap_s=30)
    reg.publish(info("old-process"), b"md", b"m")
    # the old process died: no heartbeats, so it turns STALE
    wait_for(lambda: reg.list(IDENT) == [], 10, "the dead source to turn stale")
    reg.publish(info("new-process"), b"md", b"m")
    assert [s.source_id for s in reg.list(IDENT)] == ["new-process"]


def test_invalid_input(store):
    reg = SourceRegistry(store)
    with pytest.raises(ValueError):
        reg.publish(info("bad/id"), b"", b"")
    with pytest.raises(ValueError):
        reg.publish(info("x", dataclasses.replace(IDENT, revision="")), b"", b"")
    reg.publish(info("x"), b"", b"")
    with pytest.raises(ValueError):
        reg.set_status("x", Status.STALE)
    with pytest.raises(ValueError):
        SourceRegistry(store, stale_s=10, reap_s=1)


def test_identity_key_covers_every_field():
    keys = {IDENT.key()}
    for field in dataclasses.fields(SourceIdentity):
        value = getattr(IDENT, field.name)
        other = value + 1 if isinstance(value, int) else value + "x"
        keys.add(dataclasses.replace(IDENT, **{field.name: other}).key())
    assert len(keys) == 1 + len(dataclasses.fields(SourceIdentity))
