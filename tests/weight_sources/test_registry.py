"""SourceRegistry (ModelExpress semantics) on both real stores: publish, list, get, status, reaping."""

from __future__ import annotations

import dataclasses
import time

import pytest

from mxfs.weight_sources.model import SourceIdentity, Status, WorkerState
from mxfs.weight_sources.registry import ListFilter, SourceRegistry, now_ms

SID = "0123456789abcdef"


def state(worker: str, rank: int = 0, status: Status = Status.READY, sid: str = SID, **kw) -> WorkerState:
    return WorkerState(sid, worker, rank, "org/m", status, kw.pop("updated_ms", now_ms()), "cuda", **kw)


def wait_for(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_publish_list_get_update(store):
    reg = SourceRegistry(store, heartbeat_timeout_s=30, gc_timeout_s=60)
    reg.publish(state("w/1"), b"ident", b"worker-1")  # any worker id: keys are percent-encoded
    reg.publish(state("w2", rank=1, status=Status.INITIALIZING, training_step=7), b"ident", b"worker-2")
    reg.publish(state("w3", sid="fedcba9876543210"), b"other", b"worker-3")
    assert {s.worker_id for s in reg.list(ListFilter(mx_source_id=SID))} == {"w/1", "w2"}
    assert [s.worker_id for s in reg.list(ListFilter(status=Status.READY, mx_source_id=SID))] == ["w/1"]
    assert [s.worker_id for s in reg.list(ListFilter(rank=1))] == ["w2"]
    assert [s.worker_id for s in reg.list(ListFilter(min_training_step=5))] == ["w2"]
    assert reg.list(ListFilter(min_training_step=8)) == []
    assert len(reg.list(ListFilter(limit=2))) == 2
    got, ident, worker = reg.get(SID, "w/1")
    assert (got.worker_id, ident, worker) == ("w/1", b"ident", b"worker-1")
    assert reg.get(SID, "nobody") is None
    assert reg.update_status(SID, "w2", 1, Status.READY, source_load=0.5)
    assert reg.get(SID, "w2")[0].source_load == 0.5
    assert not reg.update_status(SID, "w2", 7, Status.READY)  # unknown rank
    assert not reg.update_status(SID, "ghost", 0, Status.READY)


def test_ready_means_fresh(store):
    reg = SourceRegistry(store, heartbeat_timeout_s=30, gc_timeout_s=60)
    reg.publish(state("old", updated_ms=now_ms() - 31_000), b"i", b"w")
    reg.publish(state("new"), b"i", b"w")
    assert [s.worker_id for s in reg.list(ListFilter(status=Status.READY))] == ["new"]
    assert reg.update_status(SID, "old", 0, Status.READY)  # a heartbeat makes it fresh again
    assert {s.worker_id for s in reg.list(ListFilter(status=Status.READY))} == {"old", "new"}


def test_reaper_marks_stale_then_removes(store):
    reg = SourceRegistry(store, heartbeat_timeout_s=0.3, gc_timeout_s=0.6)
    reg.publish(state("dead"), b"i", b"w")
    reg.publish(state("alive"), b"i", b"w")
    assert reg.reap_once() == (0, 0)

    def dead_is_stale() -> bool:
        reg.update_status(SID, "alive", 0, Status.READY)
        reg.reap_once()
        return reg.get(SID, "dead")[0].status is Status.STALE

    assert wait_for(dead_is_stale)
    assert reg.get(SID, "alive")[0].status is Status.READY
    assert [s.worker_id for s in reg.list(ListFilter(status=Status.STALE))] == ["dead"]

    def dead_is_gone() -> bool:
        reg.update_status(SID, "alive", 0, Status.READY)
        reg.reap_once()
        return reg.get(SID, "dead") is None

    assert wait_for(dead_is_gone)
    assert reg.get(SID, "alive") is not None
    assert not reg.update_status(SID, "dead", 0, Status.READY)  # the worker must publish again


def test_identity_removed_with_its_last_worker(store):
    reg = SourceRegistry(store, heartbeat_timeout_s=30, gc_timeout_s=60)
    reg.publish(state("a", status=Status.STALE), b"i", b"w")
    reg.remove(reg.get(SID, "a")[0])
    assert store.get(f"p2p/ident/{SID}") is None
    assert reg.list(ListFilter()) == []


def test_heartbeat_does_not_rewrite_the_metadata(store):
    reg = SourceRegistry(store)
    reg.publish(state("s"), b"i", b"x" * (1 << 20))
    store.put(f"p2p/worker/{SID}/s/0", b"marker")  # a rewrite would restore the original bytes
    assert reg.update_status(SID, "s", 0, Status.READY)
    assert reg.get(SID, "s")[2] == b"marker"


def test_state_json_round_trip_and_bad_input(store):
    s = state("w", training_step=3, layout_signature="L", topology={"rack": "r1"}, source_load=0.25)
    assert WorkerState.from_json(s.to_json()) == s
    with pytest.raises(ValueError):
        SourceRegistry(store, heartbeat_timeout_s=0)


def test_identity_accepts():
    ident = SourceIdentity("Org/M", "a" * 40, "bfloat16", backend_version="0.32.0", rank=1)
    assert ident.accepts(dataclasses.replace(ident, model="org/m"))
    assert ident.accepts(dataclasses.replace(ident, backend_version=""))  # ModelExpress sends none
    for change in ({"rank": 0}, {"dtype": "float16"}, {"tp_size": 2}, {"revision": "b" * 40},
                   {"backend_version": "0.33.0"}, {"device": "cuda"}, {"quantization": "fp8"}):
        assert not ident.accepts(dataclasses.replace(ident, **change)), change
