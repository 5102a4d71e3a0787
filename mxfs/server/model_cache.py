"""The server's cache of remote models: hydrate, hash, publish, serve, evict.

How remote models get per-block hashes (the design choice): the server hydrates a
snapshot into its cache on the first manifest request (or ahead of time through
ModelExpress ``EnsureModelDownloaded``). Files are fetched with parallel ranged reads
into ``.partial/``, hashed in one pass (whole-file sha256 + per-block sha256), checked
against the digests the origin publishes (HF LFS sha256, git blob ids), then published
by rename; the manifest is completed before any block is served. So a mount shows the
full tree before a weight byte moves to a node, and a node's tensor read moves only the
blocks it needs (from the server cache, a peer, or the origin directly through
``OriginTier``). Origin egress is one copy of the model per cluster.

Layout: ``<cache>/models/<org>/<name>/<revision>/files/<path>`` plus
``.mxfs-manifest-<block_size>.json``; a crash leaves only ``.partial`` files behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from mxfs.config import ServerConfig
from mxfs.errors import IntegrityError, ManifestError, SourceError
from mxfs.manifest.builder import hash_file, read_tensors
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import validate_relpath
from mxfs.origins.remote import OriginUnavailable, RemoteFile, RemoteSource, Snapshot
from mxfs.server.models_registry import EvictionPolicy, Evictor, ModelRecord, ModelRegistry, Status

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
READ_RETRIES = 3
TOUCH_EVERY_S = 10.0
WAIT_POLL_S = 0.5


@dataclass
class Progress:
    total: int
    done: int = 0
    files_done: int = 0
    files: int = 0

    def message(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.files_done}/{self.files} files, {self.done}/{self.total} bytes ({pct:.0f}%)"


class ModelCache:
    """Hydrated snapshots on local disk, tracked in the registry, evicted LRU."""

    def __init__(self, root: Path, registry: ModelRegistry, policy: EvictionPolicy | None = None,
                 workers: int = 8, part_size: int = PART_SIZE) -> None:
        self.root = Path(root) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.part_size = part_size
        self._parts = ThreadPoolExecutor(max(1, workers), thread_name_prefix="mxfs-origin")
        self._jobs = ThreadPoolExecutor(4, thread_name_prefix="mxfs-hydrate")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Manifest]] = {}
        self.progress: dict[str, Progress] = {}
        self._touched: dict[str, float] = {}
        self.evictor = Evictor(registry, policy or EvictionPolicy(), self.free_bytes, self.evict)

    # -- layout ------------------------------------------------------------------------------

    def dir(self, name: str, revision: str) -> Path:
        return self.root / name / revision

    def _manifest_path(self, name: str, revision: str, block_size: int) -> Path:
        return self.dir(name, revision) / f".mxfs-manifest-{block_size}.json"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def cached(self, name: str, revision: str, block_size: int) -> Manifest | None:
        """The manifest of a completely hydrated snapshot, or None."""
        path = self._manifest_path(name, revision, block_size)
        try:
            manifest = Manifest.from_json(path.read_bytes())
        except (OSError, ManifestError):
            return None
        files = self.dir(name, revision) / "files"
        for f in manifest.files:
            try:
                if (files / f.path).stat().st_size != f.size:
                    return None
            except OSError:
                return None
        return manifest

    # -- hydration ---------------------------------------------------------------------------

    def ensure(self, source: RemoteSource, snap: Snapshot, block_size: int) -> Manifest:
        """The complete manifest of ``snap``, hydrating it first if needed (shared by callers)."""
        hit = self.cached(snap.name, snap.revision, block_size)
        if hit is not None:
            self._adopt(snap, hit)
            self.touch(snap.name, snap.revision)
            return hit
        key = f"{snap.name}@{snap.revision}"
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                future = self._jobs.submit(self._hydrate_owned, source, snap, block_size)
                self._inflight[key] = future
                future.add_done_callback(lambda _f, k=key: self._done(k))
        return future.result()

    def _done(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)
            self.progress.pop(key, None)

    def busy(self, name: str, revision: str) -> bool:
        with self._lock:
            return f"{name}@{revision}" in self._inflight

    def _adopt(self, snap: Snapshot, manifest: Manifest) -> None:
        """Files on disk with no record (fresh registry): record them as downloaded."""
        if self.registry.get(snap.name, snap.revision) is None:
            self.registry.set_status(snap.name, snap.revision, Status.DOWNLOADED, origin=snap.origin,
                                     size=manifest.total_size, last_used=time.time())

    def _hydrate_owned(self, source: RemoteSource, snap: Snapshot, block_size: int) -> Manifest:
        """Take the snapshot's lease (waiting while another live replica holds it) and hydrate."""
        while True:
            hit = self.cached(snap.name, snap.revision, block_size)
            if hit is not None:
                self._adopt(snap, hit)
                return hit
            lease = self.registry.acquire(snap.name, snap.revision)
            if lease is None:
                time.sleep(WAIT_POLL_S)  # another replica downloads it; it publishes or its lease lapses
                continue
            with lease:
                hit = self.cached(snap.name, snap.revision, block_size)
                if hit is not None:
                    self._adopt(snap, hit)
                    return hit
                self.registry.set_status(snap.name, snap.revision, Status.DOWNLOADING, origin=snap.origin,
                                         size=snap.total_size, message="")
                try:
                    manifest = self._hydrate(source, snap, block_size, lambda held=lease: held.lost)
                except BaseException as exc:
                    self.registry.set_status(snap.name, snap.revision, Status.ERROR, message=str(exc))
                    raise
                self.registry.set_status(snap.name, snap.revision, Status.DOWNLOADED, message="",
                                         size=manifest.total_size, last_used=time.time())
            self.evictor.kick()
            return manifest

    def _hydrate(self, source: RemoteSource, snap: Snapshot, block_size: int,
                 lost: Callable[[], bool]) -> Manifest:
        key = f"{snap.name}@{snap.revision}"
        progress = self.progress[key] = Progress(snap.total_size, files=len(snap.files))
        base = self.dir(snap.name, snap.revision)
        start = time.monotonic()
        entries = []
        for f in snap.files:
            final = base / "files" / validate_relpath(f.path)
            if not (final.is_file() and final.stat().st_size == f.size):
                partial = base / ".partial" / f.path
                self._download(source, snap, f, partial, progress, lost)
                digests = hash_file(partial, block_size)
                _verify(f, partial, digests[0], snap)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial, final)
            else:
                progress.done += f.size
                digests = hash_file(final, block_size)
            sha, blocks, size = digests
            tensors = read_tensors(final, size) if f.path.endswith(".safetensors") else ()
            entries.append(FileEntry(f.path, size, sha, blocks, tensors))
            progress.files_done += 1
        shutil.rmtree(base / ".partial", ignore_errors=True)
        manifest = Manifest(snap.name, snap.revision, block_size, tuple(entries), snap.origin)
        path = self._manifest_path(snap.name, snap.revision, block_size)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(manifest.to_json())
        os.replace(tmp, path)
        secs = time.monotonic() - start
        log.info("hydrated %s from %s: %d files, %d bytes in %.1fs (%.0f MB/s)", key, snap.origin,
                 len(entries), manifest.total_size, secs, manifest.total_size / max(secs, 1e-6) / 1e6)
        return manifest

    def _download(self, source: RemoteSource, snap: Snapshot, f: RemoteFile, partial: Path,
                  progress: Progress, lost: Callable[[], bool]) -> None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, f.size)

            def part(offset: int, length: int) -> None:
                for attempt in range(READ_RETRIES):
                    if lost():
                        raise SourceError(f"lost the download lease of {snap.name}@{snap.revision}")
                    try:
                        data = source.read(snap, f.path, offset, length)
                        break
                    except OriginUnavailable as exc:
                        if attempt == READ_RETRIES - 1:
                            raise
                        log.warning("retrying %s/%s@%d: %s", snap.name, f.path, offset, exc)
                        time.sleep(0.5 * (attempt + 1))
                os.pwrite(fd, data, offset)
                progress.done += length

            futures = [self._parts.submit(part, off, min(self.part_size, f.size - off))
                       for off in range(0, f.size, self.part_size)]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            wait(pending)
            for fut in done:
                fut.result()
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- serving -----------------------------------------------------------------------------

    def pread(self, manifest: Manifest, path: str, offset: int, length: int) -> bytes:
        """Raises FileNotFoundError when the snapshot was evicted."""
        fd = os.open(self.dir(manifest.name, manifest.revision) / "files" / path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise IntegrityError(f"cached {manifest.name}/{path} is shorter than its manifest says")
        return data

    def touch(self, name: str, revision: str) -> None:
        key, now = f"{name}@{revision}", time.time()
        if now - self._touched.get(key, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[key] = now
        self.registry.touch(name, revision, now)

    # -- eviction and deletion ---------------------------------------------------------------

    def evict(self, rec: ModelRecord) -> bool:
        """Remove a snapshot's files and record unless it is being downloaded right now."""
        if self.busy(rec.name, rec.revision) or self.registry.holder(rec.name, rec.revision):
            return False
        base = self.dir(rec.name, rec.revision)
        if base.exists():
            trash = self.root / ".trash" / uuid.uuid4().hex
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(base, trash)  # atomic: readers see all of it or none of it
            shutil.rmtree(trash, ignore_errors=True)
        self.registry.remove(rec.name, rec.revision)
        self._touched.pop(rec.key, None)
        return True

    def delete(self, name: str) -> list[str]:
        """Evict every cached revision of ``name``; returns the revisions removed."""
        removed = []
        revisions = {r.revision for r in self.registry.records() if r.name == name}
        model_dir = self.root / name
        if model_dir.is_dir():
            revisions |= {p.name for p in model_dir.iterdir() if not p.name.startswith(".")}
        for rev in sorted(revisions):
            rec = self.registry.get(name, rev) or ModelRecord(name, rev, Status.DOWNLOADED)
            if self.evict(rec):
                removed.append(rev)
        return removed

    def close(self) -> None:
        self.evictor.stop()
        self._jobs.shutdown(wait=False, cancel_futures=True)
        self._parts.shutdown(wait=False, cancel_futures=True)


def _verify(f: RemoteFile, path: Path, sha256: str, snap: Snapshot) -> None:
    """Check a downloaded file against the digest its origin published."""
    where = f"{snap.name}/{f.path}@{snap.revision} from {snap.origin}"
    if f.sha256 and f.sha256 != sha256:
        raise IntegrityError(f"{where}: sha256 {sha256} does not match the origin's {f.sha256}")
    if f.git_sha1 and len(f.git_sha1) == 40:
        h = hashlib.sha1(f"blob {f.size}\0".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != f.git_sha1:
            raise IntegrityError(f"{where}: git blob id {h.hexdigest()} does not match the origin's {f.git_sha1}")


class HydratingOrigin:
    """An :class:`~mxfs.origins.base.Origin` over a remote source, backed by the model cache."""

    def __init__(self, source: RemoteSource, cache: ModelCache) -> None:
        self.source = source
        self.cache = cache
        self.label = source.label
        self.provider = source.provider

    def has(self, name: str) -> bool:
        return self.source.has(name)

    def list_models(self) -> list[str]:
        return self.source.list_models()

    def snapshot(self, name: str, revision: str) -> Snapshot:
        return self.source.snapshot(name, revision)

    def resolve(self, name: str, revision: str, block_size: int) -> Manifest:
        return self.cache.ensure(self.source, self.source.snapshot(name, revision), block_size)

    def read_range(self, manifest: Manifest, path: str, offset: int, length: int) -> bytes:
        entry = manifest.file(validate_relpath(path))
        if offset < 0 or length < 0 or offset + length > entry.size:
            raise ValueError(f"range {offset}+{length} outside {path} ({entry.size} bytes)")
        try:
            data = self.cache.pread(manifest, path, offset, length)
        except FileNotFoundError:  # evicted: hydrate it again, then serve
            snap = self.source.snapshot(manifest.name, manifest.revision)
            self.cache.ensure(self.source, snap, manifest.block_size)
            data = self.cache.pread(manifest, path, offset, length)
        self.cache.touch(manifest.name, manifest.revision)
        return data


def build_remote_origins(config: ServerConfig, state_dir: Path) -> list:
    """Origins from ``config.origins`` / ``config.model_uris``; remote ones share one model cache."""
    from mxfs.origins.local import LocalOrigin
    from mxfs.origins.uri import open_source, parse_binding, parse_origin_uri
    from mxfs.registry.store import open_store

    specs = [(None, parse_origin_uri(u)) for u in config.origins or []]
    specs += [parse_binding(b) for b in config.model_uris or []]
    if not specs:
        return []
    cache: ModelCache | None = None
    origins: list = []
    for name, uri in specs:
        if uri.scheme == "file":
            if name is not None:
                raise ValueError(f"bind local models by placing them under --models-dir, not {name}={uri}")
            origins.append(LocalOrigin(Path(uri.prefix), state_dir))
            continue
        if cache is None:
            store = open_store(state_dir, config.metadata_backend or None, config.redis_url or None)
            registry = ModelRegistry(store, lease_ttl_s=config.lease_ttl_s)
            policy = EvictionPolicy(config.max_models, config.max_unused_s, config.min_free_bytes)
            cache = ModelCache(state_dir, registry, policy, workers=config.origin_workers)
        origins.append(HydratingOrigin(open_source(uri, name), cache))
    return origins


def model_cache_of(origins: list) -> ModelCache | None:
    """The model cache shared by the remote origins of a server, if any."""
    return next((o.cache for o in origins if isinstance(o, HydratingOrigin)), None)
