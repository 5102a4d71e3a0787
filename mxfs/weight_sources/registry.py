"""The NIXL source registry, on top of :class:`mxfs.registry.store.Store`.

Keys (all small except the one metadata hash, written once per publish)::

    p2p/src/<identity key>/<source id>  JSON SourceInfo          TTL reap_s
    p2p/id/<source id>                  identity key             TTL reap_s
    p2p/hb/<source id>                  b"1"                     TTL stale_s
    p2p/md/<source id>                  hash {agent, manifest}   TTL reap_s

A heartbeat only refreshes TTLs. A source whose heartbeat key expired is STALE (never
listed as READY); when its other keys expire too it is gone (reaped). Source ids are
made per worker process, so a restarted worker never matches its own dead entry.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from mxfs.registry.store import Store
from mxfs.weight_sources.errors import SourceGone
from mxfs.weight_sources.model import SourceIdentity, SourceInfo, Status

log = logging.getLogger(__name__)


def _src(idkey: str, source_id: str = "") -> str:
    return f"p2p/src/{idkey}/{source_id}"


class SourceRegistry:
    """Publish, list, heartbeat and unpublish sources; thread-safe as its store is."""

    def __init__(self, store: Store, stale_s: float = 15.0, reap_s: float = 300.0) -> None:
        if not 0 < stale_s <= reap_s:
            raise ValueError(f"need 0 < stale_s ({stale_s}) <= reap_s ({reap_s})")
        self.store = store
        self.stale_s = stale_s
        self.reap_s = reap_s

    @property
    def heartbeat_interval_s(self) -> float:
        return self.stale_s / 3

    @staticmethod
    def _check_id(source_id: str) -> None:
        if not source_id or not all(c.isalnum() or c in "-_" for c in source_id) or len(source_id) > 128:
            raise ValueError(f"invalid source id {source_id!r}")

    def publish(self, info: SourceInfo, agent_metadata: bytes, manifest: bytes) -> SourceInfo:
        """Store (or replace) one source; its big metadata is written here and only here."""
        self._check_id(info.source_id)
        if not info.identity.model or not info.identity.revision:
            raise ValueError("a source needs a model and a resolved revision")
        info = dataclasses.replace(info, updated_unix=time.time())
        idkey = info.identity.key()
        old = self.store.get(f"p2p/id/{info.source_id}")
        if old is not None and old.decode() != idkey:
            self.store.delete(_src(old.decode(), info.source_id))
        self.store.hset(f"p2p/md/{info.source_id}", {"agent": agent_metadata, "manifest": manifest}, self.reap_s)
        self.store.put(f"p2p/id/{info.source_id}", idkey.encode(), self.reap_s)
        self.store.put(_src(idkey, info.source_id), info.to_json(), self.reap_s)
        self.store.put(f"p2p/hb/{info.source_id}", b"1", self.stale_s)
        log.info("published source %s of %s@%s rank %d (%s, %d tensors, %d bytes)", info.source_id,
                 info.identity.model, info.identity.revision[:12], info.identity.rank, info.status.name,
                 info.tensor_count, info.total_bytes)
        return info

    def _record(self, source_id: str) -> tuple[str, SourceInfo]:
        self._check_id(source_id)
        idkey = self.store.get(f"p2p/id/{source_id}")
        raw = self.store.get(_src(idkey.decode(), source_id)) if idkey else None
        if idkey is None or raw is None:
            raise SourceGone(f"source {source_id} is not registered (reaped or unpublished)")
        return idkey.decode(), SourceInfo.from_json(raw)

    def _alive(self, source_id: str) -> bool:
        return self.store.get(f"p2p/hb/{source_id}") is not None

    def _effective(self, info: SourceInfo) -> SourceInfo:
        return info if self._alive(info.source_id) else dataclasses.replace(info, status=Status.STALE)

    def get(self, source_id: str) -> SourceInfo:
        return self._effective(self._record(source_id)[1])

    def list(self, identity: SourceIdentity, include_stale: bool = False) -> list[SourceInfo]:
        """Sources of exactly this identity: READY ones, or all (with derived STALE) if asked."""
        out = []
        for _, raw in self.store.scan(_src(identity.key())):
            info = self._effective(SourceInfo.from_json(raw))
            if info.identity != identity:
                continue  # a hash collision, in theory
            if include_stale or info.status is Status.READY:
                out.append(info)
        return out

    def metadata(self, source_id: str) -> tuple[SourceInfo, bytes, bytes]:
        """``(info, agent metadata, serialized manifest)`` of a live source."""
        info = self.get(source_id)
        blob = self.store.hgetall(f"p2p/md/{source_id}")
        if "agent" not in blob or "manifest" not in blob:
            raise SourceGone(f"source {source_id} has no metadata (reaped)")
        return info, blob["agent"], blob["manifest"]

    def set_status(self, source_id: str, status: Status) -> SourceInfo:
        if status in (Status.UNSPECIFIED, Status.STALE):
            raise ValueError(f"a source cannot set its status to {status.name}")
        idkey, info = self._record(source_id)
        info = dataclasses.replace(info, status=status, updated_unix=time.time())
        self.store.put(_src(idkey, source_id), info.to_json(), self.reap_s)
        self.store.put(f"p2p/hb/{source_id}", b"1", self.stale_s)
        return info

    def heartbeat(self, source_id: str) -> Status:
        """Refresh TTLs only (no record rewrite); SourceGone once reaped so the worker re-publishes."""
        idkey, info = self._record(source_id)
        for key in (f"p2p/id/{source_id}", _src(idkey, source_id), f"p2p/md/{source_id}"):
            self.store.expire(key, self.reap_s)
        self.store.put(f"p2p/hb/{source_id}", b"1", self.stale_s)
        return info.status

    def unpublish(self, source_id: str) -> bool:
        self._check_id(source_id)
        idkey = self.store.get(f"p2p/id/{source_id}")
        removed = False
        if idkey is not None:
            removed = self.store.delete(_src(idkey.decode(), source_id))
        for key in (f"p2p/id/{source_id}", f"p2p/hb/{source_id}", f"p2p/md/{source_id}"):
            self.store.delete(key)
        if removed:
            log.info("unpublished source %s", source_id)
        return removed
