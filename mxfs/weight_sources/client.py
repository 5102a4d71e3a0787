"""Client of the P2P source registry; callers get dataclasses and typed errors, never stubs."""

from __future__ import annotations

import threading

import grpc

from mxfs.errors import BlockUnavailable, InvalidModelName
from mxfs.rpc import p2p_pb2, p2p_pb2_grpc
from mxfs.rpc.channel import open_channel
from mxfs.weight_sources import convert
from mxfs.weight_sources.errors import SourceGone
from mxfs.weight_sources.model import SourceIdentity, SourceInfo, SourceMetadata, Status, TensorDesc


def _translate(exc: grpc.RpcError, what: str) -> Exception:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return SourceGone(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidModelName(detail)
    return BlockUnavailable(f"{what}: {code.name if code else 'error'}: {detail}")


class SourceClient:
    """One lazily opened channel to the server's ``P2PService``."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: p2p_pb2_grpc.P2PServiceStub | None = None

    def _s(self) -> p2p_pb2_grpc.P2PServiceStub:
        with self._lock:
            if self._stub is None:
                self._channel = open_channel(self.address)
                self._stub = p2p_pb2_grpc.P2PServiceStub(self._channel)
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
            raise _translate(exc, what) from exc

    def publish(self, identity: SourceIdentity, source_id: str, agent_name: str, agent_metadata: bytes,
                tensors: list[TensorDesc], mem_type: str, status: Status = Status.READY,
                host: str = "") -> float:
        """Publish; returns the heartbeat interval the server asks for."""
        req = p2p_pb2.PublishSourceRequest(
            identity=convert.identity_to_pb(identity), source_id=source_id, agent_name=agent_name,
            agent_metadata=agent_metadata, manifest=convert.manifest_to_pb(tensors, mem_type),
            status=int(status), host=host,
        )
        return self._call("PublishSource", req, "publish source").heartbeat_interval_s

    def list(self, identity: SourceIdentity, include_stale: bool = False) -> list[SourceInfo]:
        req = p2p_pb2.ListSourcesRequest(identity=convert.identity_to_pb(identity), include_stale=include_stale)
        return [convert.info_from_pb(s) for s in self._call("ListSources", req, "list sources").sources]

    def metadata(self, source_id: str) -> SourceMetadata:
        pb = self._call("GetSourceMetadata", p2p_pb2.SourceRef(source_id=source_id), f"metadata of {source_id}")
        return convert.metadata_from_pb(pb)

    def set_status(self, source_id: str, status: Status) -> SourceInfo:
        req = p2p_pb2.UpdateSourceStatusRequest(source_id=source_id, status=int(status))
        return convert.info_from_pb(self._call("UpdateSourceStatus", req, f"status of {source_id}"))

    def heartbeat(self, source_id: str) -> Status:
        reply = self._call("Heartbeat", p2p_pb2.SourceRef(source_id=source_id), f"heartbeat of {source_id}")
        return Status(reply.status)

    def unpublish(self, source_id: str) -> bool:
        return self._call("UnpublishSource", p2p_pb2.SourceRef(source_id=source_id), "unpublish").removed
