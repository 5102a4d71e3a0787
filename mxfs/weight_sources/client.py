"""mxfs's client of the ModelExpress P2P registry; callers get dataclasses and typed errors, never stubs.

The same ``model_express.p2p.P2pService`` that ModelExpress workers use: an mxfs source is
an ordinary worker there (full-metadata mode: NIXL agent metadata and every tensor stored
on the server, plus mxfs's shapes and checksums in fields others skip), and an mxfs target
finds sources that ModelExpress workers published too.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import grpc
from google.protobuf import descriptor_pool

from mxfs import envs
from mxfs.errors import BlockUnavailable
from mxfs.rpc.channel import open_channel
from mxfs.weight_sources.errors import P2PError, SourceGone, SourceRejected
from mxfs.weight_sources.model import SourceIdentity, SourceInfo, SourceMetadata, Status, TensorDesc

if TYPE_CHECKING:
    from mxfs.rpc import model_express_p2p_pb2 as pb
    from mxfs.rpc import model_express_p2p_pb2_grpc as pb_grpc
    from mxfs.weight_sources import convert

OUR_PROTO = "mxfs/rpc/model_express_p2p.proto"


def load_stubs() -> None:
    """Import mxfs's ``model_express.p2p`` stubs, unless another copy owns those names here.

    PyPI ``modelexpress`` generates the same protobuf names from its own file, and one
    process's descriptor pool cannot hold both: when its stubs are loaded (its vLLM plugin
    ran), P2P is off for mxfs in this process (P2PError) instead of crashing the engine.
    ``VLLM_PLUGINS=mx`` keeps ModelExpress's plugin out. Imported lazily for the same reason:
    registering mxfs's plugin must not break ``--load-format modelexpress``.
    """
    global pb, pb_grpc, convert
    try:
        owner = descriptor_pool.Default().FindFileContainingSymbol("model_express.p2p.SourceIdentity").name
    except KeyError:
        owner = OUR_PROTO
    if owner != OUR_PROTO:
        raise P2PError(f"ModelExpress's own P2P stubs ({owner}) are loaded in this process, so mxfs's cannot be: "
                       "P2P is off (set VLLM_PLUGINS=mx to keep ModelExpress's vLLM plugin out)")
    from mxfs.rpc import model_express_p2p_pb2 as pb
    from mxfs.rpc import model_express_p2p_pb2_grpc as pb_grpc
    from mxfs.weight_sources import convert


class SourceClient:
    """One lazily opened channel to the server's ``P2pService``."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.P2pServiceStub | None = None
        self._sids: dict[str, str] = {}               # worker id -> mx_source_id
        self._identities: dict[str, pb.SourceIdentity] = {}  # mx_source_id -> identity (immutable)
        self._ranks: dict[str, int] = {}              # our own published worker ids -> rank

    def _s(self) -> pb_grpc.P2pServiceStub:
        with self._lock:
            if self._stub is None:
                load_stubs()
                self._channel = open_channel(self.address)
                self._stub = pb_grpc.P2pServiceStub(self._channel)
            return self._stub

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def _call(self, method: str, request, what: str):
        try:
            return getattr(self._s(), method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            raise BlockUnavailable(f"{what}: {code.name if code else 'error'}: {exc.details()}") from exc

    # -- source side ---------------------------------------------------------------------------

    def publish(self, identity: SourceIdentity, source_id: str, agent_name: str, agent_metadata: bytes,
                tensors: list[TensorDesc], mem_type: str, status: Status = Status.READY,
                host: str = "") -> float:
        """Publish this worker (``source_id`` is its worker id) and set its status; returns the heartbeat period.

        ``mem_type`` follows from ``identity.device`` on the wire (cpu: DRAM, else VRAM).
        """
        self._s()
        if convert.mem_type_of(identity.device) != mem_type:
            raise SourceRejected(f"device {identity.device!r} does not hold {mem_type} tensors")
        req = pb.PublishMetadataRequest(
            identity=convert.identity_to_pb(identity), worker_id=source_id,
            worker=convert.worker_to_pb(identity, agent_name, agent_metadata, tensors, status, host),
        )
        reply = self._call("PublishMetadata", req, "publish source")
        if not reply.success:
            raise BlockUnavailable(f"publish source: {reply.message}")
        self._sids[source_id] = reply.mx_source_id
        self._ranks[source_id] = identity.rank
        return envs.seconds(envs.MX_HEARTBEAT_INTERVAL_SECS)

    def set_status(self, source_id: str, status: Status) -> None:
        """Status of one of our own published workers; SourceGone once the server forgot it."""
        if source_id not in self._sids:
            raise SourceGone(f"source {source_id} was never published by this client")
        self._s()
        req = pb.UpdateStatusRequest(mx_source_id=self._sids[source_id], worker_id=source_id,
                                     worker_rank=self._ranks[source_id], status=int(status))
        reply = self._call("UpdateStatus", req, f"status of {source_id}")
        if not reply.success:
            raise SourceGone(f"source {source_id}: {reply.message}")

    def heartbeat(self, source_id: str) -> Status:
        """ModelExpress's heartbeat: UpdateStatus(READY). SourceGone once reaped, so the worker re-publishes."""
        self.set_status(source_id, Status.READY)
        return Status.READY

    def unpublish(self, source_id: str) -> bool:
        """Drain: report STALE (ModelExpress's shutdown signal); the server's reaper deletes it later."""
        try:
            self.set_status(source_id, Status.STALE)
        except SourceGone:
            return False
        return True

    # -- target side ---------------------------------------------------------------------------

    def _identity(self, sid: str, worker_id: str) -> pb.SourceIdentity | None:
        if sid not in self._identities:
            reply = self._call("GetMetadata", pb.GetMetadataRequest(mx_source_id=sid, worker_id=worker_id),
                               f"identity of {sid}")
            if not reply.found:
                return None
            self._identities[sid] = reply.identity
        return self._identities[sid]

    def list(self, identity: SourceIdentity, include_stale: bool = False) -> list[SourceInfo]:
        """Workers whose identity ``identity`` accepts (READY and fresh ones only, unless asked).

        Asks by model name and rank, so sources ModelExpress workers published (other
        ``mx_version``, hence another ``mx_source_id``) are found too; the identity of each
        unfamiliar ``mx_source_id`` is fetched once and compared field by field.
        """
        self._s()
        statuses = list(Status) if include_stale else [Status.READY]
        ours = convert.source_id_of(identity)
        out = []
        for status in statuses:  # a listed instance carries no status: ask per status
            req = pb.ListSourcesRequest(model_name_filter=identity.model, worker_rank_filter=identity.rank,
                                        status_filter=int(status))
            for ref in self._call("ListSources", req, "list sources").instances:
                theirs = identity if ref.mx_source_id == ours else self._accepted(identity, ref)
                if theirs is not None:
                    self._sids[ref.worker_id] = ref.mx_source_id
                    out.append(convert.info_from_ref(ref, theirs, status))
        return out

    def _accepted(self, identity: SourceIdentity, ref: pb.SourceInstanceRef) -> SourceIdentity | None:
        """The identity of another ``mx_source_id``'s worker, if ``identity`` accepts it."""
        wire = self._identity(ref.mx_source_id, ref.worker_id)
        # extra_parameters carry framework settings mxfs cannot judge (roles, training steps, ...)
        if wire is None or wire.mx_source_type != pb.MX_SOURCE_TYPE_WEIGHTS or wire.extra_parameters:
            return None
        theirs = convert.identity_from_pb(wire, ref.worker_rank, ref.accelerator)
        return theirs if identity.accepts(theirs) else None

    def metadata(self, source: str | SourceInfo) -> SourceMetadata:
        """Agent metadata and tensor manifest of a listed worker (SourceGone if it is no longer there)."""
        self._s()
        worker_id = source.source_id if isinstance(source, SourceInfo) else source
        sid = source.mx_source_id if isinstance(source, SourceInfo) else self._sids.get(worker_id, "")
        if not sid:
            raise SourceGone(f"source {worker_id} is unknown to this client (list it first)")
        reply = self._call("GetMetadata", pb.GetMetadataRequest(mx_source_id=sid, worker_id=worker_id),
                           f"metadata of {worker_id}")
        if not reply.found:
            raise SourceGone(f"source {worker_id} is not registered (reaped)")
        return convert.metadata_from_pb(reply)
