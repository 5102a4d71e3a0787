"""The server's model registry: status and last use of every cached snapshot, download
leases shared by server replicas, and LRU eviction.

Built on :mod:`mxfs.registry.store` (sqlite by default, Redis when
``MX_METADATA_BACKEND=redis``). A download is owned through a lease key with a TTL that
its owner renews; when the owner dies the key expires, so a record that says
DOWNLOADING without a live lease is reported as ERROR ("interrupted") and the next
request takes the download over. Nothing can stay "downloading" after a crash.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from mxfs.registry.store import Store

log = logging.getLogger(__name__)


class Status(str, enum.Enum):
    DOWNLOADING = "DOWNLOADING"
    DOWNLOADED = "DOWNLOADED"
    ERROR = "ERROR"


@dataclass(frozen=True)
class ModelRecord:
    name: str
    revision: str
    status: Status
    origin: str = ""
    size: int = 0
    last_used: float = 0.0
    updated: float = 0.0
    owner: str = ""
    message: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}@{self.revision}"

    def encode(self) -> bytes:
        doc = asdict(self)
        doc["status"] = self.status.value
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ModelRecord:
        doc = json.loads(raw)
        doc["status"] = Status(doc["status"])
        return cls(**doc)


def default_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """An owned download: renewed in the background until released; ``lost`` if it expired."""

    def __init__(self, store: Store, key: str, token: bytes, ttl_s: float) -> None:
        self._store, self.key, self.token, self.ttl_s = store, key, token, ttl_s
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{key}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                ok = self._store.compare_and_put(self.key, self.token, self.token, self.ttl_s)
            except Exception as exc:  # a store outage must not kill the thread; the lease may lapse
                log.warning("cannot renew lease %s: %s", self.key, exc)
                continue
            if not ok:
                log.warning("lease %s was lost (expired or taken over)", self.key)
                self._lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        # compare-and-expire: only our own lease is dropped
        self._store.compare_and_put(self.key, self.token, b"released", ttl_s=0.001)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelRegistry:
    """Status/last-use records and download leases; safe to share between replicas."""

    def __init__(self, store: Store, replica: str | None = None, lease_ttl_s: float = 30.0) -> None:
        self.store = store
        self.replica = replica or default_replica_id()
        self.lease_ttl_s = lease_ttl_s

    @staticmethod
    def _rkey(name: str, revision: str) -> str:
        return f"models/{name}@{revision}"

    @staticmethod
    def _lkey(name: str, revision: str) -> str:
        return f"leases/{name}@{revision}"

    def get(self, name: str, revision: str) -> ModelRecord | None:
        raw = self.store.get(self._rkey(name, revision))
        return self._reconcile(raw) if raw is not None else None

    def records(self) -> list[ModelRecord]:
        return [self._reconcile(raw) for _, raw in self.store.scan("models/")]

    def _reconcile(self, raw: bytes) -> ModelRecord:
        rec = ModelRecord.decode(raw)
        if rec.status is Status.DOWNLOADING and self.holder(rec.name, rec.revision) is None:
            fixed = replace(rec, status=Status.ERROR, updated=time.time(),
                            message=f"download by {rec.owner} was interrupted; the next request restarts it")
            self.store.compare_and_put(self._rkey(rec.name, rec.revision), raw, fixed.encode())
            return fixed
        return rec

    def put(self, record: ModelRecord) -> None:
        self.store.put(self._rkey(record.name, record.revision), replace(record, updated=time.time()).encode())

    def set_status(self, name: str, revision: str, status: Status, **fields: object) -> ModelRecord:
        old = self.store.get(self._rkey(name, revision))
        base = ModelRecord.decode(old) if old else ModelRecord(name, revision, status)
        rec = replace(base, status=status, owner=self.replica, **fields)  # type: ignore[arg-type]
        self.put(rec)
        return rec

    def touch(self, name: str, revision: str, when: float | None = None) -> None:
        """Record a use (callers throttle this; last writer wins, which is fine for LRU)."""
        raw = self.store.get(self._rkey(name, revision))
        if raw is None:
            return
        rec = ModelRecord.decode(raw)
        self.store.compare_and_put(self._rkey(name, revision), raw,
                                   replace(rec, last_used=max(rec.last_used, when or time.time())).encode())

    def remove(self, name: str, revision: str) -> bool:
        return self.store.delete(self._rkey(name, revision))

    def holder(self, name: str, revision: str) -> str | None:
        raw = self.store.get(self._lkey(name, revision))
        if raw is None or raw == b"released":
            return None
        return raw.decode(errors="replace").rsplit("#", 1)[0]

    def acquire(self, name: str, revision: str) -> Lease | None:
        """The download lease of a snapshot, or None while another live replica holds it."""
        key = self._lkey(name, revision)
        token = f"{self.replica}#{secrets.token_hex(8)}".encode()
        if self.store.put_if_absent(key, token, self.lease_ttl_s):
            return Lease(self.store, key, token, self.lease_ttl_s)
        current = self.store.get(key)
        if current == b"released" and self.store.compare_and_put(key, current, token, self.lease_ttl_s):
            return Lease(self.store, key, token, self.lease_ttl_s)
        return None


# -- eviction ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvictionPolicy:
    """0 disables a bound. Models are evicted least recently used first."""

    max_models: int = 0
    max_unused_s: float = 0.0
    min_free_bytes: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.max_models or self.max_unused_s or self.min_free_bytes)


def select_victims(records: list[ModelRecord], policy: EvictionPolicy, now: float,
                   free_bytes: int) -> list[ModelRecord]:
    """Which downloaded snapshots to evict, LRU first, so every bound of ``policy`` holds."""
    live = sorted((r for r in records if r.status is Status.DOWNLOADED), key=lambda r: r.last_used)
    victims: list[ModelRecord] = []
    for rec in live:
        stale = policy.max_unused_s > 0 and now - rec.last_used > policy.max_unused_s
        too_many = policy.max_models > 0 and len(live) - len(victims) > policy.max_models
        too_full = policy.min_free_bytes > 0 and free_bytes < policy.min_free_bytes
        if stale or too_many or too_full:
            victims.append(rec)
            free_bytes += rec.size
    return victims


class Evictor:
    """Runs ``select_victims`` periodically and after downloads; ``evict(rec)`` frees the files."""

    def __init__(self, registry: ModelRegistry, policy: EvictionPolicy, free_bytes: Callable[[], int],
                 evict: Callable[[ModelRecord], bool]) -> None:
        self.registry, self.policy = registry, policy
        self._free_bytes, self._evict = free_bytes, evict
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run_once(self) -> list[str]:
        if not self.policy.enabled:
            return []
        with self._lock:
            evicted = []
            for rec in select_victims(self.registry.records(), self.policy, time.time(), self._free_bytes()):
                if self._evict(rec):
                    evicted.append(rec.key)
            if evicted:
                log.info("evicted %s", ", ".join(evicted))
            return evicted

    def kick(self) -> None:
        self._kick.set()

    def start(self, interval_s: float) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self._kick.wait(interval_s)
                self._kick.clear()
                if self._stop.is_set():
                    return
                try:
                    self.run_once()
                except Exception:  # keep evicting later; log the bug with its traceback
                    log.exception("eviction pass failed")

        self._thread = threading.Thread(target=loop, name="mxfs-evictor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
