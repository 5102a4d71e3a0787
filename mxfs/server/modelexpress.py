"""ModelExpress-compatible ``model_express.model.ModelService`` on the mxfs server.

Names: ``org/name`` (any provider), or a URI under one of the server's origins
(``s3://bucket/prefix/org/name``, ``/models/org/name``). A name found in the local origin
(``--models-dir``) is served from there whatever provider the request names; otherwise
the provider picks the origin kind (HUGGING_FACE -> hf, S3 -> s3, GCS -> gs).
Resolved revisions are 40-hex for every provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import grpc

from mxfs.errors import InvalidModelName, ModelNotFound, MxfsError
from mxfs.manifest.model import Manifest
from mxfs.manifest.names import validate_name, validate_relpath, validate_revision
from mxfs.rpc import model_express_model_pb2 as pb
from mxfs.rpc import model_express_model_pb2_grpc as pb_grpc
from mxfs.server.catalog import ModelCatalog
from mxfs.server.errors import rpc
from mxfs.server.metrics import ServerMetrics
from mxfs.server.model_cache import HydratingOrigin, ModelCache, model_cache_of

if TYPE_CHECKING:
    from mxfs.server.app import ServerContext

DEFAULT_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
STATUS_EVERY_S = 1.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx",
                   ".pkl", ".npz", ".ot", ".tflite")
PROVIDER_KINDS = {pb.HUGGING_FACE: {"hf"}, pb.S3: {"s3"}, pb.GCS: {"gs"}, pb.NGC: set()}


def is_weight(path: str) -> bool:
    return path.lower().endswith(WEIGHT_SUFFIXES)


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, catalog: ModelCatalog, cache: ModelCache | None, metrics: ServerMetrics,
                 chunk_size: int = DEFAULT_CHUNK) -> None:
        self.catalog = catalog
        self.cache = cache
        self.metrics = metrics
        self.chunk_size = min(chunk_size or DEFAULT_CHUNK, MAX_CHUNK)
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="mx-ensure")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- naming ----------------------------------------------------------------------------

    def target(self, model_name: str, provider: int) -> tuple[str, set[str]]:
        """(org/name, origin kinds allowed) for a request; local origins are always allowed."""
        kinds = PROVIDER_KINDS.get(provider, set()) | {"local"}
        text = model_name.strip()
        if "://" not in text and not text.startswith("/"):
            return validate_name(text), kinds
        for origin in self.catalog.origins:
            base = origin.label.removeprefix("local:").rstrip("/")
            if text.rstrip("/") == base and getattr(getattr(origin, "source", None), "single", None):
                return origin.source.single, {getattr(origin, "provider", "local")}
            if text.startswith(base + "/"):
                return validate_name(text[len(base) + 1:].strip("/")), {getattr(origin, "provider", "local")}
        raise ModelNotFound(f"{model_name} is not under any origin of this server "
                            f"({', '.join(o.label for o in self.catalog.origins) or 'none configured'})")

    @staticmethod
    def _revision(request: pb.ModelDownloadRequest | pb.ModelFilesRequest) -> str:
        return validate_revision(request.revision) if request.HasField("revision") and request.revision else ""

    # -- RPCs -------------------------------------------------------------------------------

    @rpc("mx.EnsureModelDownloaded", streaming=True)
    def EnsureModelDownloaded(self, request: pb.ModelDownloadRequest,
                              context: grpc.ServicerContext) -> Iterator[pb.ModelStatusUpdate]:
        def update(status: int, message: str = "", revision: str = "") -> pb.ModelStatusUpdate:
            up = pb.ModelStatusUpdate(model_name=request.model_name, status=status, provider=request.provider)
            if message:
                up.message = message
            if revision:
                up.resolved_revision = revision
            return up

        try:
            name, kinds = self.target(request.model_name, request.provider)
            revision = self._revision(request)
        except MxfsError as exc:
            yield update(pb.ERROR, str(exc))
            return
        yield update(pb.DOWNLOADING, f"resolving {name}@{revision or 'main'}")
        future = self._pool.submit(self._ensure_all, name, revision, kinds)
        while True:
            try:
                manifest: Manifest = future.result(timeout=STATUS_EVERY_S)
                break
            except FutureTimeout:
                if not context.is_active():
                    return  # the download goes on; a later request picks it up
                yield update(pb.DOWNLOADING, self._progress(name))
            except MxfsError as exc:
                yield update(pb.ERROR, str(exc))
                return
        yield update(pb.DOWNLOADED, f"{len(manifest.files)} files, {manifest.total_size} bytes",
                     manifest.revision)

    def _ensure_all(self, name: str, revision: str, kinds: set[str]) -> Manifest:
        """Resolve, then have every byte on the server (lazily served remote files included)."""
        manifest = self.catalog.resolve(name, revision, kinds)
        origin = self.catalog.entry(name, manifest.revision).origin
        if isinstance(origin, HydratingOrigin) and any(f.lazy for f in manifest.files):
            origin.ensure_all(manifest)
        return manifest

    def _progress(self, name: str) -> str:
        if self.cache is not None:
            for key, progress in list(self.cache.progress.items()):
                if key.startswith(name + "@"):
                    return "downloading: " + progress.message()
        return "resolving"

    def _select(self, request: pb.ModelFilesRequest, files: list[tuple[str, int]], where: str) -> list[tuple[str, int]]:
        paths = list(request.file_selector.paths) if request.HasField("file_selector") else []
        if paths:
            known = dict(files)
            for p in paths:
                if validate_relpath(p) not in known:
                    raise ModelNotFound(f"{p} is not a file of {where}")
            files = [(p, known[p]) for p in dict.fromkeys(paths)]
        if request.ignore_weights:
            files = [(p, s) for p, s in files if not is_weight(p)]
        return files

    @rpc("mx.ListModelFiles")
    def ListModelFiles(self, request: pb.ModelFilesRequest, context: grpc.ServicerContext) -> pb.ModelFileList:
        name, kinds = self.target(request.model_name, request.provider)
        revision = self._revision(request)
        files, where = self._listing(name, revision, kinds)
        files = self._select(request, files, where)
        reply = pb.ModelFileList(model_name=request.model_name, total_size=sum(s for _, s in files))
        for path, size in files:
            reply.files.add(relative_path=path, size=size)
        return reply

    def _listing(self, name: str, revision: str, kinds: set[str]) -> tuple[list[tuple[str, int]], str]:
        """File list without hydrating a remote model (origin metadata only)."""
        for origin in self.catalog.origins:
            if getattr(origin, "provider", "local") not in kinds or not origin.has(name):
                continue
            if isinstance(origin, HydratingOrigin):
                snap = origin.snapshot(name, revision)
                return [(f.path, f.size) for f in snap.files], f"{name}@{snap.revision}"
            break
        m = self.catalog.resolve(name, revision, kinds)
        return [(f.path, f.size) for f in m.files], f"{name}@{m.revision}"

    @rpc("mx.StreamModelFiles", streaming=True)
    def StreamModelFiles(self, request: pb.ModelFilesRequest, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        name, kinds = self.target(request.model_name, request.provider)
        manifest = self.catalog.resolve(name, self._revision(request), kinds)
        origin = self.catalog.entry(name, manifest.revision).origin
        chunk = min(request.chunk_size or self.chunk_size, MAX_CHUNK)
        files = self._select(request, [(f.path, f.size) for f in manifest.files], f"{name}@{manifest.revision}")
        for i, (path, size) in enumerate(files):
            last_file = i == len(files) - 1
            pos = 0
            while True:
                if not context.is_active():
                    return
                n = min(chunk, size - pos)
                data = origin.read_range(manifest, path, pos, n) if n else b""
                done = pos + n == size
                out = pb.FileChunk(relative_path=path, data=data, offset=pos, total_size=size,
                                   is_last_chunk=done, is_last_file=last_file and done)
                if pos == 0:
                    out.commit_hash = manifest.revision
                self.metrics.bytes_served.inc(n)
                yield out
                pos += n
                if done:
                    break

    @rpc("mx.DeleteModel")
    def DeleteModel(self, request: pb.DeleteModelRequest, context: grpc.ServicerContext) -> pb.DeleteModelResponse:
        try:
            name, _ = self.target(request.model_name, request.provider)
        except (InvalidModelName, ModelNotFound) as exc:
            return pb.DeleteModelResponse(success=False, message=str(exc))
        removed = self.cache.delete(name) if self.cache is not None else []
        if removed:
            return pb.DeleteModelResponse(success=True, message=f"removed {name}@{', '.join(removed)} from the cache")
        return pb.DeleteModelResponse(success=False, message=f"{name} is not in the server cache")


def install(ctx: ServerContext) -> None:
    """SERVICE_PLUGINS hook: ModelService + the model cache's eviction thread."""
    cache = model_cache_of(ctx.catalog.origins)
    servicer = ModelServicer(ctx.catalog, cache, ctx.metrics, ctx.config.chunk_size)
    pb_grpc.add_ModelServiceServicer_to_server(servicer, ctx.grpc_server)
    ctx.services.append(pb.DESCRIPTOR.services_by_name["ModelService"].full_name)
    ctx.on_stop.append(servicer.close)
    if cache is not None:
        cache.evictor.start(ctx.config.evict_interval_s)
        ctx.on_stop.append(cache.close)
