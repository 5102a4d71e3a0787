"""Node-side model resolution: asks the server, remembers manifests on local disk so a
restarted daemon can keep serving cached files while the server is away. A name the server
does not know is remembered for a while (``misses``), so repeated lookups of missing names
cost no request; the per-name locks live only while someone waits on them. A server that is
only slow or briefly unreachable (a link saturated by block traffic, a restart) is asked again
a bounded number of times before a lookup fails, unless a stored manifest can answer now."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from mxfs.cache.faults import CacheFaults
from mxfs.errors import BlockUnavailable, ManifestError, ModelNotFound
from mxfs.fetch.threads import in_thread
from mxfs.fileio import atomic_write, path_under
from mxfs.manifest.model import Manifest
from mxfs.manifest.names import ModelRef, is_commit
from mxfs.manifest.validate import validate_manifest
from mxfs.misses import RecentMisses
from mxfs.rpc.client import MxfsClient

log = logging.getLogger(__name__)

MANIFEST_ATTEMPTS = 3
RETRY_DELAY_S = 0.5  # doubled after each failed attempt


class ManifestResolver:
    """Resolve ``ModelRef`` -> ``Manifest`` once per ref (shared by concurrent callers)."""

    def __init__(self, client: MxfsClient, state_dir: Path, limiter: trio.CapacityLimiter,
                 faults: CacheFaults | None = None, misses: RecentMisses[ModelRef] | None = None) -> None:
        self.client = client
        self.faults = faults or CacheFaults()
        self.misses: RecentMisses[ModelRef] = misses if misses is not None else RecentMisses()
        self.dir = Path(state_dir) / "manifests"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limiter = limiter
        self._locks: dict[ModelRef, tuple[trio.Lock, int]] = {}  # -> (lock, holders and waiters)
        self._resolved: dict[ModelRef, Manifest] = {}

    @contextlib.asynccontextmanager
    async def _locked(self, ref: ModelRef) -> AsyncIterator[None]:
        lock, users = self._locks.get(ref, (None, 0))
        lock = lock or trio.Lock()
        self._locks[ref] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[ref]
            if users == 1:
                del self._locks[ref]
            else:
                self._locks[ref] = (lock, users - 1)

    async def resolve(self, ref: ModelRef) -> Manifest:
        async with self._locked(ref):
            hit = self._resolved.get(ref)
            if hit is not None:
                return hit
            missing = self.misses.get(ref)
            if missing is not None:
                raise ModelNotFound(missing)
            try:
                manifest, fresh = await self._ask_server(ref)
            except ModelNotFound as exc:
                self.misses.add(ref, str(exc))
                raise
            if fresh:
                try:
                    await in_thread(self._save, ref, manifest)
                except OSError as exc:  # e.g. a full disk: serve it now, it is only not remembered
                    self.faults.report("manifest", exc, ref)
            self._resolved[ref] = manifest
            return manifest

    async def _ask_server(self, ref: ModelRef) -> tuple[Manifest, bool]:
        """``(manifest, fresh)``: the server's manifest for ``ref`` (fresh), or after a transient
        failure (``BlockUnavailable``) the stored one at once; without one, the server is asked again."""
        delay = RETRY_DELAY_S
        for attempt in range(1, MANIFEST_ATTEMPTS + 1):
            try:
                return await in_thread(
                    self.client.get_manifest, ref.name, ref.revision, limiter=self.limiter, abandon=True
                ), True
            except BlockUnavailable as exc:
                stored = await in_thread(self._load, ref)
                if stored is not None:
                    log.warning("server unavailable (%s); using the stored manifest of %s", exc, ref)
                    return stored, False
                if attempt == MANIFEST_ATTEMPTS:
                    raise
                log.warning("manifest of %s: %s; asking again in %.1f s (%d/%d)",
                            ref, exc, delay, attempt, MANIFEST_ATTEMPTS)
                await trio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _paths(self, name: str, revision: str) -> tuple[Path, Path]:
        return path_under(self.dir, name, f"{revision}.json"), path_under(self.dir, name, "refs", revision)

    def _save(self, ref: ModelRef, manifest: Manifest) -> None:
        path, ref_path = self._paths(manifest.name, manifest.revision)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            atomic_write(path, manifest.to_json().encode())
        if not is_commit(ref.revision):
            _, ref_path = self._paths(ref.name, ref.revision)
            ref_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(ref_path, manifest.revision.encode())

    def _load(self, ref: ModelRef) -> Manifest | None:
        revision = ref.revision
        if not is_commit(revision):
            _, ref_path = self._paths(ref.name, revision)
            try:
                revision = ref_path.read_text().strip()
            except OSError:
                return None
        path, _ = self._paths(ref.name, revision)
        try:
            return validate_manifest(Manifest.from_json(path.read_bytes()), ref.name, revision)
        except (OSError, ManifestError):
            return None

