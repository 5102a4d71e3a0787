"""The server's P2P source registry (ModelExpress semantics), on :class:`mxfs.registry.store.Store`.

Keys, all under one ``mx_source_id`` (worker ids are percent-encoded)::

    p2p/ident/<sid>                  the SourceIdentity bytes the first worker sent
    p2p/worker/<sid>/<wid>/<rank>    the WorkerMetadata bytes, as published (written once)
    p2p/state/<sid>/<wid>/<rank>     JSON WorkerState: status, updated_at, load (heartbeats)

No TTLs: like ModelExpress, a reaper pass marks a worker STALE once its last status
update is older than the heartbeat timeout, and deletes a STALE worker once that is older
than the GC timeout. Every pass is idempotent, so each server replica on one Redis may run
its own. State changes are compare-and-swap, so a heartbeat racing the reaper is never
lost and a deleted worker is never resurrected.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

from mxfs.registry.store import Store
from mxfs.weight_sources.model import Status, WorkerState

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


def _wid(worker_id: str) -> str:
    return quote(worker_id, safe="")


def _state_key(sid: str, worker_id: str, rank: int) -> str:
    return f"p2p/state/{sid}/{_wid(worker_id)}/{rank}"


def _worker_key(sid: str, worker_id: str, rank: int) -> str:
    return f"p2p/worker/{sid}/{_wid(worker_id)}/{rank}"


@dataclass(frozen=True)
class ListFilter:
    """ListSources predicates; None means "any"."""

    mx_source_id: str | None = None
    status: Status | None = None
    model_name: str | None = None
    rank: int | None = None
    min_training_step: int | None = None
    min_updated_ms: int | None = None
    limit: int | None = None


class SourceRegistry:
    """Publish, list, fetch, update and reap workers; thread-safe as its store is."""

    def __init__(self, store: Store, heartbeat_timeout_s: float = 90.0, gc_timeout_s: float = 3600.0) -> None:
        if heartbeat_timeout_s <= 0 or gc_timeout_s <= 0:
            raise ValueError(f"timeouts must be positive (heartbeat {heartbeat_timeout_s}, gc {gc_timeout_s})")
        self.store = store
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.gc_timeout_s = gc_timeout_s

    def publish(self, state: WorkerState, identity: bytes, worker: bytes) -> None:
        """Store (or replace) one worker rank; its big metadata is written here only."""
        sid = state.mx_source_id
        self.store.put(f"p2p/ident/{sid}", identity)
        self.store.put(_worker_key(sid, state.worker_id, state.rank), worker)
        self.store.put(_state_key(sid, state.worker_id, state.rank), state.to_json())
        log.info("published %s worker %s rank %d of %s (%s)", sid, state.worker_id, state.rank, state.model_name,
                 state.status.name)

    def _states(self, sid: str | None = None) -> list[WorkerState]:
        out = []
        for _, raw in self.store.scan(f"p2p/state/{sid}/" if sid else "p2p/state/"):
            try:
                out.append(WorkerState.from_json(raw))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping an unreadable worker record: %s", exc)
        return out

    def fresh(self, state: WorkerState, at_ms: int | None = None) -> bool:
        """Was its status updated within the heartbeat timeout?"""
        age = (at_ms or now_ms()) - state.updated_ms
        return state.updated_ms > 0 and age <= self.heartbeat_timeout_s * 1000

    def list(self, f: ListFilter) -> list[WorkerState]:
        """Matching workers, newest first; READY means READY *and* fresh (as ModelExpress does)."""
        at = now_ms()
        out = [s for s in self._states(f.mx_source_id) if self._matches(s, f, at)]
        out.sort(key=lambda s: s.updated_ms, reverse=True)
        return out[:f.limit] if f.limit else out

    def _matches(self, s: WorkerState, f: ListFilter, at_ms: int) -> bool:
        if f.status is not None and s.status is not f.status:
            return False
        if f.status is Status.READY and not self.fresh(s, at_ms):
            return False
        if f.min_training_step is not None and (s.training_step is None or s.training_step < f.min_training_step):
            return False
        return ((f.model_name is None or s.model_name == f.model_name) and (f.rank is None or s.rank == f.rank)
                and (f.min_updated_ms is None or s.updated_ms >= f.min_updated_ms))

    def get(self, sid: str, worker_id: str) -> tuple[WorkerState, bytes, bytes] | None:
        """``(state, identity bytes, worker bytes)`` of the worker's lowest rank, or None."""
        prefix = f"p2p/state/{sid}/{_wid(worker_id)}/"
        states = sorted((WorkerState.from_json(raw) for _, raw in self.store.scan(prefix)), key=lambda s: s.rank)
        for state in states:
            worker = self.store.get(_worker_key(sid, worker_id, state.rank))
            identity = self.store.get(f"p2p/ident/{sid}")
            if worker is not None and identity is not None:
                return state, identity, worker
        return None

    def update_status(self, sid: str, worker_id: str, rank: int, status: Status,
                      source_load: float | None = None) -> bool:
        """Set a worker rank's status and refresh its timestamp; False if it is not registered."""
        key = _state_key(sid, worker_id, rank)
        for _ in range(8):
            raw = self.store.get(key)
            if raw is None:
                return False
            state = WorkerState.from_json(raw)
            new = dataclasses.replace(state, status=status, updated_ms=max(now_ms(), state.updated_ms),
                                      source_load=state.source_load if source_load is None else source_load)
            if self.store.compare_and_put(key, raw, new.to_json()):
                return True
        raise RuntimeError(f"status of {sid}/{worker_id}/{rank} kept changing under the update")

    def remove(self, state: WorkerState) -> None:
        """Delete one worker rank (and the identity once no worker of it remains)."""
        sid = state.mx_source_id
        self.store.delete(_state_key(sid, state.worker_id, state.rank))
        self.store.delete(_worker_key(sid, state.worker_id, state.rank))
        if not self.store.scan(f"p2p/state/{sid}/"):
            self.store.delete(f"p2p/ident/{sid}")

    def reap_once(self) -> tuple[int, int]:
        """Mark silent workers STALE, delete long-STALE ones; returns ``(staled, removed)``.

        ModelExpress leaves a worker that published but never sent a status (UNKNOWN)
        forever; here every non-STALE status goes STALE after the heartbeat timeout.
        """
        staled = removed = 0
        at = now_ms()
        for s in self._states():
            age_ms = at - s.updated_ms
            key = _state_key(s.mx_source_id, s.worker_id, s.rank)
            if s.status is not Status.STALE and age_ms > self.heartbeat_timeout_s * 1000:
                new = dataclasses.replace(s, status=Status.STALE, updated_ms=at)
                if self.store.compare_and_put(key, s.to_json(), new.to_json()):
                    staled += 1
            elif (s.status is Status.STALE and age_ms > self.gc_timeout_s * 1000
                  and self.store.compare_and_put(key, s.to_json(), s.to_json())):  # unchanged since the scan
                self.remove(s)
                removed += 1
        if staled or removed:
            log.info("reaper: %d workers marked STALE, %d removed", staled, removed)
        return staled, removed


class Reaper:
    """Runs :meth:`SourceRegistry.reap_once` every ``interval_s`` on its own thread."""

    def __init__(self, registry: SourceRegistry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mx-p2p-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.registry.reap_once()
            except Exception:  # a store outage must not end the reaper; logged with its traceback
                log.exception("reaper pass failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

