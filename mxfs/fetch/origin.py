"""Tier: blocks read straight from the model's origin with this node's own credentials.

For clusters where nodes can reach the bucket/Hub themselves, so the server only hands out
manifests and is not a data bottleneck. The tier serves a manifest only when its origin
label matches one of the configured sources, reads ranges pinned to the manifest's
revision (HF commit; object ETags re-listed and checked against the revision) and leaves
verification to the chain.
"""

from __future__ import annotations

import logging
import threading

import trio

from mxfs.errors import BlockUnavailable, InvalidModelName, ModelNotFound, MxfsError, OriginDenied, SourceError
from mxfs.fetch.threads import in_thread
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.origins.remote import OriginUnavailable, RemoteSource, Snapshot

log = logging.getLogger(__name__)


class OriginTier:
    name = "origin"

    def __init__(self, sources: list[RemoteSource], limiter: trio.CapacityLimiter) -> None:
        self.sources = {s.label: s for s in sources}
        self.limiter = limiter
        self._lock = threading.Lock()
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._bad: set[tuple[str, str, str]] = set()

    @classmethod
    def from_uris(cls, uris: list[str], limiter: trio.CapacityLimiter) -> OriginTier:
        from mxfs.origins.uri import open_source, parse_origin_uri

        return cls([open_source(parse_origin_uri(u)) for u in uris], limiter)

    def _snapshot(self, source: RemoteSource, manifest: Manifest) -> Snapshot:
        key = (manifest.name, manifest.revision)
        with self._lock:
            hit = self._snapshots.get(key)
        if hit is None:
            hit = source.snapshot(manifest.name, manifest.revision)  # pinned: raises if it moved
            with self._lock:
                self._snapshots[key] = hit
        return hit

    def _read(self, source: RemoteSource, manifest: Manifest, path: str, offset: int, length: int) -> bytes:
        try:
            return source.read(self._snapshot(source, manifest), path, offset, length)
        except (OriginUnavailable, ModelNotFound, InvalidModelName) as exc:
            raise BlockUnavailable(f"origin {source.label}: {exc}") from exc
        except (OriginDenied, SourceError) as exc:
            raise SourceError(f"origin {source.label}: {exc}") from exc
        except MxfsError as exc:
            raise BlockUnavailable(f"origin {source.label}: {exc}") from exc

    async def fetch(self, manifest: Manifest, entry: FileEntry, index: int) -> bytes:
        source = self.sources.get(manifest.origin)
        if source is None:
            raise BlockUnavailable(f"{manifest.name} comes from {manifest.origin or 'an unknown origin'}, "
                                   "which this node cannot reach directly")
        if (manifest.name, manifest.revision, entry.path) in self._bad:
            raise BlockUnavailable(f"origin copy of {entry.path} failed verification before")
        offset, length = entry.block_span(index, manifest.block_size)
        return await in_thread(self._read, source, manifest, entry.path, offset, length,
                               limiter=self.limiter, abandon=True)

    def quarantine(self, manifest: Manifest, entry: FileEntry, index: int) -> None:
        log.warning("origin bytes of %s/%s block %d failed verification; not using the origin for that file",
                    manifest.name, entry.path, index)
        self._bad.add((manifest.name, manifest.revision, entry.path))
