"""The server's model catalog: resolves through origins, remembers manifests and use.

A name (and revision) that no origin has is remembered for a while (``misses``), so a
client that keeps asking for it does not cost an origin (Hub) request each time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mxfs.errors import ModelNotFound
from mxfs.fileio import atomic_write, path_under
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import is_commit, validate_name, validate_relpath, validate_revision
from mxfs.manifest.validate import validate_manifest
from mxfs.misses import RecentMisses
from mxfs.origins.base import Origin

log = logging.getLogger(__name__)


@dataclass
class CatalogEntry:
    manifest: Manifest
    origin: Origin
    last_used: float


class ModelCatalog:
    """Thread-safe map of resolved snapshots, persisted as JSON manifests in the cache dir."""

    def __init__(self, origins: list[Origin], state_dir: Path, block_size: int,
                 misses: RecentMisses[tuple[str, str, frozenset[str] | None]] | None = None) -> None:
        self.origins = origins
        self.block_size = block_size
        self.misses: RecentMisses[tuple[str, str, frozenset[str] | None]] = (
            misses if misses is not None else RecentMisses())
        self._dir = state_dir / "manifests"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], CatalogEntry] = {}

    def _origin_for(self, name: str, kinds: set[str] | None = None, label: str = "") -> Origin:
        """First origin (of the given provider ``kinds``) with the model; ``label`` wins if given."""
        allowed = [o for o in self.origins if kinds is None or getattr(o, "provider", "local") in kinds]
        for origin in sorted(allowed, key=lambda o: o.label != label) if label else allowed:
            if origin.has(name):
                return origin
        raise ModelNotFound(f"model {name} not found in any origin")

    def resolve(self, name: str, revision: str, kinds: set[str] | None = None) -> Manifest:
        """Resolve ``name@revision`` to a manifest (a commit-shaped revision is looked up first)."""
        validate_name(name)
        if revision:
            validate_revision(revision)
        if is_commit(revision):
            entry = self._lookup(name, revision)
            if entry is not None:
                entry.last_used = time.time()
                return entry.manifest
        asked = (name, revision, frozenset(kinds) if kinds is not None else None)
        missing = self.misses.get(asked)
        if missing is not None:
            raise ModelNotFound(missing)
        try:
            origin = self._origin_for(name, kinds)
            manifest = validate_manifest(origin.resolve(name, revision, self.block_size), name, revision)
        except ModelNotFound as exc:
            self.misses.add(asked, str(exc))
            raise
        with self._lock:
            known = self._entries.get((name, manifest.revision))
            self._entries[(name, manifest.revision)] = CatalogEntry(manifest, origin, time.time())
        if known is None:
            self._persist(manifest)
            log.info("resolved %s@%s -> %s (%d files, %d bytes)", name, revision or "main",
                     manifest.revision, len(manifest.files), manifest.total_size)
        return manifest

    def entry(self, name: str, revision: str) -> CatalogEntry:
        """The entry of a resolved (commit) revision; resolves on a miss."""
        validate_name(name)
        entry = self._lookup(name, revision)
        if entry is None:
            self.resolve(name, revision)
            entry = self._lookup(name, revision)
        if entry is None:
            raise ModelNotFound(f"revision {revision} of {name} is unknown")
        entry.last_used = time.time()
        return entry

    def file(self, name: str, revision: str, path: str) -> tuple[CatalogEntry, FileEntry]:
        """One file of a resolved (40-hex) revision, for the range and hash requests."""
        if not is_commit(revision):
            raise ValueError("a resolved 40-hex revision is required")
        entry = self.entry(name, revision)
        return entry, entry.manifest.file(validate_relpath(path))

    def _lookup(self, name: str, revision: str) -> CatalogEntry | None:
        with self._lock:
            entry = self._entries.get((name, revision))
        if entry is not None or not is_commit(revision):
            return entry
        path = path_under(self._dir, name, f"{revision}.json")
        if not path.exists():
            return None
        manifest = Manifest.from_json(path.read_bytes())
        try:
            origin = self._origin_for(name, label=manifest.origin)
        except ModelNotFound:
            return None
        with self._lock:
            return self._entries.setdefault((name, revision), CatalogEntry(manifest, origin, time.time()))

    def _persist(self, manifest: Manifest) -> None:
        path = path_under(self._dir, manifest.name, f"{manifest.revision}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, manifest.to_json())

    def known(self) -> list[CatalogEntry]:
        with self._lock:
            return list(self._entries.values())

    def available_names(self) -> list[str]:
        names: list[str] = []
        for origin in self.origins:
            names += [n for n in origin.list_models() if n not in names]
        return names
