"""``model_express.p2p.P2pService`` on the mxfs server, and the plugin that installs it.

Answers exactly as ModelExpress's server does: every failure in band (``success=false``,
``found=false`` or an empty list) with status OK, because its clients read them that way.
Unknown methods are UNIMPLEMENTED and undecodable requests INTERNAL (gRPC's own answers).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

import grpc

from mxfs import envs
from mxfs.registry.store import open_store
from mxfs.rpc import model_express_p2p_pb2 as pb
from mxfs.rpc import model_express_p2p_pb2_grpc as pb_grpc
from mxfs.server.errors import rpc
from mxfs.server.metrics import ServerMetrics
from mxfs.weight_sources.convert import status_of
from mxfs.weight_sources.model import Status, WorkerState
from mxfs.weight_sources.registry import ListFilter, Reaper, SourceRegistry, now_ms
from mxfs.weight_sources.source_id import mx_source_id

if TYPE_CHECKING:
    from mxfs.server.app import ServerContext

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["P2pService"].full_name


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a registry store raises when it is unreachable or broken (answered in band)."""
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:
        pass
    return tuple(errors)


STORE_ERRORS = _store_errors()


def _training_step(extra: dict[str, str]) -> int | None:
    """``training_step`` (else ``version``) of the identity's extra parameters, if a number."""
    value = extra.get("training_step", extra.get("version", ""))
    return int(value) if value.isdigit() else None


class P2pServicer(pb_grpc.P2pServiceServicer):
    """Thin: validates, converts, delegates to :class:`SourceRegistry`."""

    def __init__(self, registry: SourceRegistry, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.metrics = metrics

    @rpc("p2p.PublishMetadata")
    def PublishMetadata(self, request: pb.PublishMetadataRequest, context: grpc.ServicerContext):
        def fail(message: str) -> pb.PublishMetadataResponse:
            return pb.PublishMetadataResponse(success=False, message=message)

        if not request.HasField("identity"):
            return fail("identity is required")
        identity = request.identity
        if not identity.model_name:
            return fail("identity.model_name is required")
        if not request.worker_id:
            return fail("worker_id is required")
        if not request.HasField("worker"):
            return fail("worker is required")
        sid = mx_source_id(identity)
        w = request.worker
        extra = dict(identity.extra_parameters)
        state = WorkerState(
            mx_source_id=sid, worker_id=request.worker_id, rank=w.worker_rank, model_name=identity.model_name,
            status=status_of(w.status), updated_ms=w.updated_at or now_ms(), accelerator=w.accelerator,
            training_step=_training_step(extra), layout_signature=extra.get("layout_signature") or None,
            topology=dict(w.topology),
        )
        try:
            self.registry.publish(state, identity.SerializeToString(), w.SerializeToString())
        except STORE_ERRORS as exc:
            log.error("PublishMetadata: %s", exc)
            return fail(f"Failed to publish metadata: {exc}")
        tensors = len(w.tensor_source.tensors) if w.HasField("tensor_source") else len(w.tensors)
        return pb.PublishMetadataResponse(
            success=True, mx_source_id=sid, worker_id=request.worker_id,
            message=(f"Published metadata for '{identity.model_name}' (source_id={sid}, "
                     f"worker_id={request.worker_id}, worker_rank={w.worker_rank}, {tensors} tensors)"),
        )

    @rpc("p2p.ListSources")
    def ListSources(self, request: pb.ListSourcesRequest, context: grpc.ServicerContext):
        status = None
        if request.HasField("status_filter") and request.status_filter in Status._value2member_map_:
            status = Status(request.status_filter)
        f = ListFilter(
            mx_source_id=mx_source_id(request.identity) if request.identity.model_name else None,
            status=status,
            model_name=request.model_name_filter if request.HasField("model_name_filter") else None,
            rank=request.worker_rank_filter if request.HasField("worker_rank_filter") else None,
            min_training_step=request.min_training_step if request.HasField("min_training_step") else None,
            min_updated_ms=request.min_updated_at if request.HasField("min_updated_at") else None,
            limit=request.limit if request.HasField("limit") and request.limit > 0 else None,
        )
        try:
            states = self.registry.list(f)
        except STORE_ERRORS as exc:
            log.error("ListSources: %s", exc)
            return pb.ListSourcesResponse()
        reply = pb.ListSourcesResponse()
        for s in states:
            ref = reply.instances.add(mx_source_id=s.mx_source_id, worker_id=s.worker_id, model_name=s.model_name,
                                      worker_rank=s.rank, accelerator=s.accelerator, updated_at=s.updated_ms,
                                      topology=s.topology)
            if s.training_step is not None:
                ref.training_step = s.training_step
            if s.layout_signature is not None:
                ref.layout_signature = s.layout_signature
            if s.source_load is not None:
                ref.source_load = s.source_load
        return reply

    @rpc("p2p.GetMetadata")
    def GetMetadata(self, request: pb.GetMetadataRequest, context: grpc.ServicerContext):
        if not request.mx_source_id or not request.worker_id:
            return pb.GetMetadataResponse(found=False)
        missing = pb.GetMetadataResponse(found=False, mx_source_id=request.mx_source_id, worker_id=request.worker_id)
        try:
            record = self.registry.get(request.mx_source_id, request.worker_id)
        except STORE_ERRORS as exc:
            log.error("GetMetadata: %s", exc)
            return pb.GetMetadataResponse(found=False)
        if record is None:
            return missing
        state, identity, worker = record
        reply = pb.GetMetadataResponse(found=True, mx_source_id=request.mx_source_id, worker_id=request.worker_id)
        reply.identity.ParseFromString(identity)
        reply.worker.ParseFromString(worker)  # unknown (newer) fields survive the round trip
        reply.worker.status = int(state.status)
        reply.worker.updated_at = state.updated_ms
        return reply

    @rpc("p2p.UpdateStatus")
    def UpdateStatus(self, request: pb.UpdateStatusRequest, context: grpc.ServicerContext):
        def answer(success: bool, message: str) -> pb.UpdateStatusResponse:
            return pb.UpdateStatusResponse(success=success, message=message)

        if not request.mx_source_id:
            return answer(False, "mx_source_id is required")
        if not request.worker_id:
            return answer(False, "worker_id is required")
        if request.status not in Status._value2member_map_:
            return answer(False, f"invalid status value: {request.status}")
        where = f"source '{request.mx_source_id}' worker_id '{request.worker_id}' rank {request.worker_rank}"
        load = request.source_load if request.HasField("source_load") else None
        try:
            updated = self.registry.update_status(request.mx_source_id, request.worker_id, request.worker_rank,
                                                  Status(request.status), load)
        except (*STORE_ERRORS, RuntimeError) as exc:
            log.error("UpdateStatus: %s", exc)
            return answer(False, f"Failed to update status: {exc}")
        if not updated:
            return answer(False, f"Failed to update status: {where} is not registered")
        return answer(True, f"Updated status for {where}")


def register(ctx: ServerContext) -> None:
    """Server plugin: the registry in ``<state>/p2p`` (or Redis), its reaper, the gRPC service."""
    store = open_store(ctx.state_dir / "p2p", ctx.config.metadata_backend or None, ctx.config.redis_url or None)
    registry = SourceRegistry(store, envs.seconds(envs.MX_HEARTBEAT_TIMEOUT_SECS),
                              envs.seconds(envs.MX_GC_TIMEOUT_SECS))
    pb_grpc.add_P2pServiceServicer_to_server(P2pServicer(registry, ctx.metrics), ctx.grpc_server)
    ctx.services.append(SERVICE_NAME)
    reaper = Reaper(registry, envs.seconds(envs.MX_REAPER_SCAN_INTERVAL_SECS))
    reaper.start()
    ctx.on_stop.extend([reaper.stop, store.close])
    log.info("P2P source registry: STALE after %gs without a heartbeat, removed %gs later (scan every %gs)",
             registry.heartbeat_timeout_s, registry.gc_timeout_s, reaper.interval_s)
