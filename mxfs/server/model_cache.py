"""The server's cache of remote models: manifests from metadata, blocks on demand, evict.

How remote models get per-block hashes (the design choice). In ``lazy`` origin mode (the
default) the manifest of a remote snapshot is built from the origin's listing without
moving weights: small files (configs, tokenizers, index json; up to ``eager_max_bytes``)
are hydrated at once as below, every larger file is *lazy* — its content id is the
digest the origin publishes (HF LFS sha256) or, where it publishes none (S3/GCS/Azure),
a stable id of the pinned object version (``digest_verified=False``); its tensor index
comes from two small ranged reads of the safetensors header; its block hashes are left
out. A node asks ``GetBlockHashes`` for the blocks it reads; the server then reads just
those blocks from the origin, hashes and keeps them (``mxfs.server.origin_blocks``), so a
tensor read moves only its blocks from the origin, and a mount shows the tree at once.

In ``hydrate`` mode (and for the small files of ``lazy`` mode) files are fetched with
parallel ranged reads into ``.partial/``, hashed in one pass (whole-file sha256 +
per-block sha256), checked against the digests the origin publishes (HF LFS sha256, git
blob ids), then published by rename; the manifest is completed before any block is served.
ModelExpress ``EnsureModelDownloaded`` still means "everything on the server": it fills
every lazy block too (``ensure_all``). Origin egress is one copy of the model per cluster.

Layout: ``<cache>/models/<org>/<name>/<revision>/files/<path>`` plus
``.mxfs-manifest-<block_size>.json``; lazy blocks in ``<cache>/origin-blocks/``; a crash
leaves only ``.partial`` files behind.
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
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from mxfs.config import ServerConfig
from mxfs.errors import IntegrityError, ManifestError, SourceError
from mxfs.fileio import atomic_write, path_under, pread_file
from mxfs.manifest import hashing
from mxfs.manifest.builder import hash_file, read_tensors
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import validate_relpath
from mxfs.manifest.safetensors import parse_header
from mxfs.origins.remote import OriginUnavailable, RemoteFile, RemoteSource, Snapshot
from mxfs.server.models_registry import EvictionPolicy, Evictor, ModelRecord, ModelRegistry, Status
from mxfs.server.origin_blocks import OriginBlocks, OriginRead

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
READ_RETRIES = 3
TOUCH_EVERY_S = 10.0
WAIT_POLL_S = 0.5
EAGER_MAX_BYTES = 16 * 1024 * 1024
ORIGIN_MODES = ("lazy", "hydrate")


def pin_id(snap: Snapshot, f: RemoteFile) -> str:
    """Content id of an origin object that publishes no digest: its pinned version, hashed."""
    return hashlib.sha256(f"mxfs-pin\0{snap.origin}\0{snap.name}\0{f.path}\0{f.size}\0{f.etag}".encode()).hexdigest()


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
                 workers: int = 8, part_size: int = PART_SIZE, mode: str = "lazy",
                 eager_max_bytes: int = EAGER_MAX_BYTES, block_store_bytes: int = 0,
                 on_origin_bytes: Callable[[int], None] | None = None) -> None:
        if mode not in ORIGIN_MODES:
            raise ValueError(f"origin mode must be one of {ORIGIN_MODES}, not {mode!r}")
        self.root = Path(root) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.part_size = part_size
        self.mode = mode
        self.eager_max_bytes = eager_max_bytes
        self.block_store_bytes = block_store_bytes
        self.origin_bytes = 0  # bytes read from origins (all modes), for metrics and tests
        self._on_origin_bytes = on_origin_bytes
        self._workers = max(1, workers)
        self._blocks: OriginBlocks | None = None
        self._filling: set[str] = set()
        self._parts = ThreadPoolExecutor(max(1, workers), thread_name_prefix="mxfs-origin")
        self._jobs = ThreadPoolExecutor(4, thread_name_prefix="mxfs-hydrate")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Manifest]] = {}
        self.progress: dict[str, Progress] = {}
        self._touched: dict[str, float] = {}
        self.evictor = Evictor(registry, policy or EvictionPolicy(), self.free_bytes, self.evict)

    # -- layout ------------------------------------------------------------------------------

    def dir(self, name: str, revision: str) -> Path:
        return path_under(self.root, name, revision)

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
            if f.lazy:
                continue  # served block by block from the origin block store
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
            key = f"{name}@{revision}"
            return key in self._inflight or key in self._filling

    def count_origin(self, n: int) -> None:
        self.origin_bytes += n
        if self._on_origin_bytes is not None:
            self._on_origin_bytes(n)

    @property
    def blocks(self) -> OriginBlocks:
        """The lazy block store, opened on first use."""
        with self._lock:
            if self._blocks is None:
                store = self.root.parent / "origin-blocks"
                store.mkdir(parents=True, exist_ok=True)
                limit = self.block_store_bytes or int(shutil.disk_usage(store).free * 0.9)
                self._blocks = OriginBlocks(store, self._parts, limit, self.count_origin)
            return self._blocks

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
        lazy = {f.path for f in snap.files if self.mode == "lazy" and f.size > self.eager_max_bytes}
        progress = self.progress[key] = Progress(sum(f.size for f in snap.files if f.path not in lazy),
                                                 files=len(snap.files))
        base = self.dir(snap.name, snap.revision)
        start = time.monotonic()
        entries = []
        for f in snap.files:
            if f.path in lazy:
                entries.append(self._lazy_entry(source, snap, f))
                progress.files_done += 1
                continue
            final = base / "files" / validate_relpath(f.path)
            if not (final.is_file() and final.stat().st_size == f.size):
                partial = base / ".partial" / f.path
                self._download(source, snap, f, partial, progress, lost)
                digests = hash_file(partial, block_size, hashing.DEFAULT)
                _verify(f, partial, digests[0], snap)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial, final)
            else:
                progress.done += f.size
                digests = hash_file(final, block_size, hashing.DEFAULT)
            sha, blocks, size = digests
            tensors = read_tensors(final, size) if f.path.endswith(".safetensors") else ()
            entries.append(FileEntry(f.path, size, sha, blocks, tensors))
            progress.files_done += 1
        shutil.rmtree(base / ".partial", ignore_errors=True)
        manifest = Manifest(snap.name, snap.revision, block_size, tuple(entries), snap.origin,
                            block_hash=hashing.DEFAULT)
        path = self._manifest_path(snap.name, snap.revision, block_size)
        path.parent.mkdir(parents=True, exist_ok=True)  # a snapshot of lazy files only has no files/ yet
        atomic_write(path, manifest.to_json())
        secs = time.monotonic() - start
        log.info("hydrated %s from %s: %d files (%d lazy), %d bytes now in %.1fs (%.0f MB/s)", key, snap.origin,
                 len(entries), len(lazy), progress.done, secs, progress.done / max(secs, 1e-6) / 1e6)
        return manifest

    def _lazy_entry(self, source: RemoteSource, snap: Snapshot, f: RemoteFile) -> FileEntry:
        """A file described from metadata: content id, size and (safetensors) tensor index."""
        validate_relpath(f.path)
        sha, verified = (f.sha256, True) if f.sha256 else (pin_id(snap, f), False)
        tensors: tuple = ()
        if f.path.endswith(".safetensors"):
            _, tensors = parse_header(lambda offset, length: self._header_read(source, snap, f.path, offset, length),
                                      f.size)
        return FileEntry(f.path, f.size, sha, (), tensors, digest_verified=verified)

    def _header_read(self, source: RemoteSource, snap: Snapshot, path: str, offset: int, length: int) -> bytes:
        length = max(0, min(length, snap.file(path).size - offset))  # parse_header checks what comes back
        for attempt in range(READ_RETRIES):
            try:
                data = source.read(snap, path, offset, length)
                break
            except OriginUnavailable as exc:
                if attempt == READ_RETRIES - 1:
                    raise
                log.warning("retrying origin read @%d+%d: %s", offset, length, exc)
                time.sleep(0.5 * (attempt + 1))
        self.count_origin(len(data))
        return data

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
                self.count_origin(len(data))
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
        data = pread_file(self.dir(manifest.name, manifest.revision) / "files" / path, offset, length)
        if len(data) != length:
            raise IntegrityError(f"cached {manifest.name}/{path} is shorter than its manifest says")
        return data

    def origin_reader(self, source: RemoteSource, manifest: Manifest, path: str) -> OriginRead:
        """Reads of one file of a lazy snapshot at its origin (pinned to the listing's version)."""
        snap = source.snapshot(manifest.name, manifest.revision)

        def read(offset: int, length: int) -> bytes:
            return source.read(snap, path, offset, length)

        opener = getattr(source, "open_range", None)
        if opener is not None:  # origins whose bytes go straight into the blocks' buffers
            read.open = lambda offset, length: opener(snap, path, offset, length)  # type: ignore[attr-defined]
        return read

    def _used(self, source: RemoteSource, manifest: Manifest) -> None:
        """Record a use; a snapshot evicted meanwhile is resolved again (so it is tracked and
        evictable again). Throttled like ``touch``; call from request threads only."""
        key = f"{manifest.name}@{manifest.revision}"
        if time.time() - self._touched.get(key, 0.0) < TOUCH_EVERY_S:
            return
        if not self._manifest_path(manifest.name, manifest.revision, manifest.block_size).exists():
            self.ensure(source, source.snapshot(manifest.name, manifest.revision), manifest.block_size)
        self.touch(manifest.name, manifest.revision)

    def read_lazy(self, source: RemoteSource, manifest: Manifest, entry: FileEntry, offset: int,
                  length: int) -> bytes:
        self._used(source, manifest)
        return self.blocks.read_range(entry, manifest.block_size, offset, length,
                                      self.origin_reader(source, manifest, entry.path), manifest.block_hash)

    def pinned_lazy_block(self, source: RemoteSource, manifest: Manifest, entry: FileEntry,
                          index: int) -> AbstractContextManager[tuple[Path, int, int] | memoryview]:
        """A verified lazy block to send (see ``OriginBlocks.pinned_block``)."""
        self._used(source, manifest)
        return self.blocks.pinned_block(entry, manifest.block_size, index,
                                        self.origin_reader(source, manifest, entry.path), manifest.block_hash)

    def block_hashes(self, source: RemoteSource, manifest: Manifest, entry: FileEntry, first: int, count: int,
                     lookahead: int) -> list[bytes]:
        """Block digests of ``entry`` from block ``first`` (see ``OriginBlocks.block_hashes``)."""
        if not entry.lazy:
            n = entry.block_count(manifest.block_size)
            if not 0 <= first < n:
                raise ValueError(f"blocks {first}+{count} outside {entry.path} ({n} blocks)")
            return list(entry.block_hashes[first: first + count + lookahead])
        self._used(source, manifest)
        return self.blocks.block_hashes(entry, manifest.block_size, first, count, lookahead,
                                        self.origin_reader(source, manifest, entry.path), manifest.block_hash)

    def ensure_all(self, source: RemoteSource, snap: Snapshot, block_size: int) -> Manifest:
        """``ensure`` and then every lazy block on the server too (ModelExpress semantics)."""
        manifest = self.ensure(source, snap, block_size)
        lazy = [f for f in manifest.files if f.lazy]
        if not lazy:
            return manifest
        key = f"{snap.name}@{snap.revision}"
        with self._lock:
            self._filling.add(key)
        try:
            progress = self.progress[key] = Progress(manifest.total_size, files=len(manifest.files))
            progress.done = sum(f.size for f in manifest.files if not f.lazy)
            progress.files_done = len(manifest.files) - len(lazy)
            window = 2 * self._workers

            def advance(n: int) -> None:
                progress.done += n

            for f in lazy:
                self.blocks.fill(f, block_size, self.origin_reader(source, manifest, f.path), window, advance,
                                 algorithm=manifest.block_hash)
                progress.files_done += 1
        finally:
            with self._lock:
                self._filling.discard(key)
                self.progress.pop(key, None)
        self.touch(snap.name, snap.revision)
        self.evictor.kick()
        return manifest

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
        for path in base.glob(".mxfs-manifest-*.json"):
            try:
                manifest = Manifest.from_json(path.read_bytes())
            except (OSError, ManifestError):
                continue
            for f in manifest.files:
                if f.lazy:
                    self.blocks.discard_file(f, manifest.block_size)
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
        with self._lock:
            blocks, self._blocks = self._blocks, None
        if blocks is not None:
            blocks.close()


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

    def ensure_all(self, manifest: Manifest) -> Manifest:
        """Every byte of a resolved snapshot on the server (lazy blocks included)."""
        return self.cache.ensure_all(self.source, self.source.snapshot(manifest.name, manifest.revision),
                                     manifest.block_size)

    def block_hashes(self, manifest: Manifest, path: str, first: int, count: int, lookahead: int) -> list[bytes]:
        entry = manifest.file(validate_relpath(path))
        return self.cache.block_hashes(self.source, manifest, entry, first, count, lookahead)

    def local_file(self, manifest: Manifest, path: str) -> Path | None:
        """The server's own copy of a hydrated (not lazy) file, for ``sendfile``."""
        entry = manifest.file(validate_relpath(path))
        if entry.lazy:
            return None
        local = self.cache.dir(manifest.name, manifest.revision) / "files" / path
        if not local.is_file():  # evicted: hydrate it again
            self.cache.ensure(self.source, self.source.snapshot(manifest.name, manifest.revision),
                              manifest.block_size)
        self.cache.touch(manifest.name, manifest.revision)
        return local

    def lazy_block(self, manifest: Manifest, path: str, index: int
                   ) -> AbstractContextManager[tuple[Path, int, int] | memoryview] | None:
        """For a lazy file: its verified block ``index`` to send (pinned while the context
        is open), as a view of it in memory or (stored blob, offset, length). None for a
        file on disk."""
        entry = manifest.file(validate_relpath(path))
        if not entry.lazy:
            return None
        return self.cache.pinned_lazy_block(self.source, manifest, entry, index)

    def read_range(self, manifest: Manifest, path: str, offset: int, length: int) -> bytes:
        entry = manifest.file(validate_relpath(path))
        if offset < 0 or length < 0 or offset + length > entry.size:
            raise ValueError(f"range {offset}+{length} outside {path} ({entry.size} bytes)")
        if entry.lazy:
            return self.cache.read_lazy(self.source, manifest, entry, offset, length)
        try:
            data = self.cache.pread(manifest, path, offset, length)
        except FileNotFoundError:  # evicted: hydrate it again, then serve
            snap = self.source.snapshot(manifest.name, manifest.revision)
            self.cache.ensure(self.source, snap, manifest.block_size)
            data = self.cache.pread(manifest, path, offset, length)
        self.cache.touch(manifest.name, manifest.revision)
        return data


def build_remote_origins(config: ServerConfig, state_dir: Path,
                         on_origin_bytes: Callable[[int], None] | None = None) -> list:
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
            cache = ModelCache(state_dir, registry, policy, workers=config.origin_workers, mode=config.origin_mode,
                               eager_max_bytes=config.origin_eager_bytes,
                               block_store_bytes=config.origin_block_store_bytes, on_origin_bytes=on_origin_bytes)
        origins.append(HydratingOrigin(open_source(uri, name), cache))
    return origins


def model_cache_of(origins: list) -> ModelCache | None:
    """The model cache shared by the remote origins of a server, if any."""
    return next((o.cache for o in origins if isinstance(o, HydratingOrigin)), None)
