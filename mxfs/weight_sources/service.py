"""gRPC ``mxfs.p2p.v1.P2PService`` on the mxfs server, and the plugin that installs it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from mxfs import envs
from mxfs.registry.store import open_store
from mxfs.rpc import p2p_pb2, p2p_pb2_grpc
from mxfs.server.errors import rpc
from mxfs.server.metrics import ServerMetrics
from mxfs.weight_sources import convert
from mxfs.weight_sources.model import SourceInfo, Status
from mxfs.weight_sources.registry import SourceRegistry

if TYPE_CHECKING:
    from mxfs.server.app import ServerContext

log = logging.getLogger(__name__)


class P2PServicer(p2p_pb2_grpc.P2PServiceServicer):
    """Thin: validates, converts, delegates to :class:`SourceRegistry` (SourceGone is NOT_FOUND)."""

    def __init__(self, registry: SourceRegistry, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.metrics = metrics

    @rpc("PublishSource")
    def PublishSource(self, request: p2p_pb2.PublishSourceRequest, context: grpc.ServicerContext):
        m = request.manifest
        info = SourceInfo(
            source_id=request.source_id, identity=convert.identity_from_pb(request.identity),
            status=Status(request.status or Status.READY), agent_name=request.agent_name, host=request.host,
            tensor_count=len(m.tensors), total_bytes=sum(t.size for t in m.tensors),
        )
        if not request.agent_metadata or not request.agent_name:
            raise ValueError("a source needs its NIXL agent name and metadata")
        if info.status is Status.STALE:
            raise ValueError("a source cannot publish itself as STALE")
        self.registry.publish(info, request.agent_metadata, m.SerializeToString())
        return p2p_pb2.PublishSourceReply(source_id=info.source_id,
                                          heartbeat_interval_s=self.registry.heartbeat_interval_s,
                                          stale_after_s=self.registry.stale_s)

    @rpc("ListSources")
    def ListSources(self, request: p2p_pb2.ListSourcesRequest, context: grpc.ServicerContext):
        infos = self.registry.list(convert.identity_from_pb(request.identity), request.include_stale)
        return p2p_pb2.ListSourcesReply(sources=[convert.info_to_pb(i) for i in infos])

    @rpc("GetSourceMetadata")
    def GetSourceMetadata(self, request: p2p_pb2.SourceRef, context: grpc.ServicerContext):
        info, agent, manifest = self.registry.metadata(request.source_id)
        return p2p_pb2.SourceMetadata(info=convert.info_to_pb(info), agent_metadata=agent,
                                      manifest=p2p_pb2.TensorManifest.FromString(manifest))

    @rpc("UpdateSourceStatus")
    def UpdateSourceStatus(self, request: p2p_pb2.UpdateSourceStatusRequest, context: grpc.ServicerContext):
        return convert.info_to_pb(self.registry.set_status(request.source_id, Status(request.status)))

    @rpc("Heartbeat")
    def Heartbeat(self, request: p2p_pb2.SourceRef, context: grpc.ServicerContext):
        return p2p_pb2.HeartbeatReply(status=int(self.registry.heartbeat(request.source_id)))

    @rpc("UnpublishSource")
    def UnpublishSource(self, request: p2p_pb2.SourceRef, context: grpc.ServicerContext):
        return p2p_pb2.UnpublishReply(removed=self.registry.unpublish(request.source_id))


def register(ctx: ServerContext) -> None:
    """Server plugin: the source registry in ``<state>/p2p`` (or Redis), served over gRPC."""
    store = open_store(ctx.state_dir / "p2p")
    registry = SourceRegistry(store, float(envs.MX_P2P_STALE_S.get() or 15), float(envs.MX_P2P_REAP_S.get() or 300))
    p2p_pb2_grpc.add_P2PServiceServicer_to_server(P2PServicer(registry, ctx.metrics), ctx.grpc_server)
    ctx.on_stop.append(store.close)
    log.info("P2P source registry: stale after %.0fs, reaped after %.0fs", registry.stale_s, registry.reap_s)
