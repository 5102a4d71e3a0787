"""gRPC servicers of the server: mxfs.v1.MxfsService and the ModelExpress health service."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

import mxfs
from mxfs.rpc import model_express_health_pb2 as health_pb2
from mxfs.rpc import model_express_health_pb2_grpc as health_grpc
from mxfs.rpc import mxfs_pb2
from mxfs.rpc.convert import manifest_to_pb
from mxfs.rpc.fastchunk import encode_chunk
from mxfs.server.catalog import ModelCatalog
from mxfs.server.errors import rpc
from mxfs.server.metrics import ServerMetrics

MAX_CHUNK = 4 * 1024 * 1024
SERVICE_NAME = mxfs_pb2.DESCRIPTOR.services_by_name["MxfsService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["HealthService"].full_name
MAX_RANGE = 1 << 40
MAX_HASHES = 1024  # per GetBlockHashes reply (32 KiB of digests)


class MxfsServicer:
    """Manifests and byte ranges, read from the origin chunk by chunk."""

    def __init__(self, catalog: ModelCatalog, metrics: ServerMetrics, chunk_size: int) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.chunk_size = chunk_size
        self.data_port = 0  # set once the HTTP data plane listens

    @rpc("GetManifest")
    def GetManifest(self, request: mxfs_pb2.ModelRequest, context: grpc.ServicerContext) -> mxfs_pb2.Manifest:
        manifest = self.catalog.resolve(request.name, request.revision)
        self.metrics.models.set(len(self.catalog.known()))
        return manifest_to_pb(manifest)

    @rpc("GetServerInfo")
    def GetServerInfo(
        self, request: mxfs_pb2.ServerInfoRequest, context: grpc.ServicerContext
    ) -> mxfs_pb2.ServerInfo:
        return mxfs_pb2.ServerInfo(version=mxfs.__version__, data_port=self.data_port)

    @rpc("ListModels")
    def ListModels(
        self, request: mxfs_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> mxfs_pb2.ListModelsReply:
        reply = mxfs_pb2.ListModelsReply()
        seen = set()
        for e in sorted(self.catalog.known(), key=lambda e: (e.manifest.name, -e.last_used)):
            m = e.manifest
            seen.add(m.name)
            reply.models.add(name=m.name, revision=m.revision, total_size=m.total_size,
                             file_count=len(m.files), origin=m.origin, last_used_unix=e.last_used)
        for name in self.catalog.available_names():
            if name not in seen:
                reply.models.add(name=name)
        return reply

    @rpc("GetBlockHashes")
    def GetBlockHashes(
        self, request: mxfs_pb2.BlockHashesRequest, context: grpc.ServicerContext
    ) -> mxfs_pb2.BlockHashesReply:
        entry, f = self.catalog.file(request.name, request.revision, request.path)
        manifest, origin, path = entry.manifest, entry.origin, f.path
        count = max(1, min(request.count, MAX_HASHES))
        lookahead = min(request.lookahead, MAX_HASHES - count)
        if f.lazy:
            hashes = origin.block_hashes(manifest, path, request.first, count, lookahead)
        else:
            n = f.block_count(manifest.block_size)
            if not 0 <= request.first < n:
                raise ValueError(f"blocks {request.first}+{count} outside {path} ({n} blocks)")
            hashes = list(f.block_hashes[request.first: request.first + count + lookahead])
        return mxfs_pb2.BlockHashesReply(hashes=hashes)

    @rpc("ReadRange", streaming=True)
    def ReadRange(self, request: mxfs_pb2.RangeRequest, context: grpc.ServicerContext) -> Iterator[tuple[int, bytes]]:
        entry, f = self.catalog.file(request.name, request.revision, request.path)
        manifest, origin, path = entry.manifest, entry.origin, f.path
        offset, length = request.offset, request.length
        if length > MAX_RANGE or offset + length > f.size:
            raise ValueError(f"range {offset}+{length} outside {path} ({f.size} bytes)")
        chunk = min(request.chunk_size or self.chunk_size, MAX_CHUNK)
        self.metrics.blocks_served.inc(len(f.blocks_for(offset, length, manifest.block_size)))
        end = offset + length
        pos = offset
        while pos < end:
            if not context.is_active():
                return
            n = min(chunk, end - pos)
            data = origin.read_range(manifest, path, pos, n)
            self.metrics.bytes_served.inc(len(data))
            yield pos, data  # encoded by fastchunk.encode_chunk (see add_to_server)
            pos += n


def add_to_server(servicer: MxfsServicer, server: grpc.Server) -> None:
    """Register MxfsService; ReadRange's chunks go through the fast Chunk encoder."""
    req = mxfs_pb2
    handlers = {
        "GetManifest": grpc.unary_unary_rpc_method_handler(
            servicer.GetManifest, request_deserializer=req.ModelRequest.FromString,
            response_serializer=req.Manifest.SerializeToString),
        "ReadRange": grpc.unary_stream_rpc_method_handler(
            servicer.ReadRange, request_deserializer=req.RangeRequest.FromString,
            response_serializer=encode_chunk),
        "GetServerInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetServerInfo, request_deserializer=req.ServerInfoRequest.FromString,
            response_serializer=req.ServerInfo.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, request_deserializer=req.ListModelsRequest.FromString,
            response_serializer=req.ListModelsReply.SerializeToString),
        "GetBlockHashes": grpc.unary_unary_rpc_method_handler(
            servicer.GetBlockHashes, request_deserializer=req.BlockHashesRequest.FromString,
            response_serializer=req.BlockHashesReply.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class HealthServicer(health_grpc.HealthServiceServicer):
    """ModelExpress-compatible GetHealth."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def GetHealth(self, request: health_pb2.HealthRequest, context: grpc.ServicerContext) -> health_pb2.HealthResponse:
        return health_pb2.HealthResponse(
            version=mxfs.__version__, status="ok", uptime=int(time.monotonic() - self.started)
        )
