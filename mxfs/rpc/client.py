"""Synchronous client of the mxfs server; callers never touch stubs or channels."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from mxfs.errors import BlockUnavailable, InvalidModelName, ManifestError, ModelNotFound
from mxfs.manifest.model import Manifest
from mxfs.manifest.validate import validate_manifest
from mxfs.rpc import model_express_health_pb2 as health_pb2
from mxfs.rpc import model_express_health_pb2_grpc as health_grpc
from mxfs.rpc import mxfs_pb2, mxfs_pb2_grpc
from mxfs.rpc.channel import ChannelSecurity, open_channel
from mxfs.rpc.convert import manifest_from_pb
from mxfs.rpc.fastchunk import decode_chunk

MAX_CHUNK_BYTES = 4 * 1024 * 1024
READ_RANGE_METHOD = "/mxfs.v1.MxfsService/ReadRange"


@dataclass(frozen=True)
class Health:
    version: str
    status: str
    uptime_s: int


@dataclass(frozen=True)
class ModelSummary:
    name: str
    revision: str
    total_size: int
    file_count: int
    origin: str
    last_used_unix: float


def translate_rpc_error(exc: grpc.RpcError, what: str) -> Exception:
    """Map a gRPC status to the typed mxfs error that callers handle."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidModelName(detail)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ManifestError(detail)
    return BlockUnavailable(f"{what}: {code.name if code else 'error'}: {detail}")


class MxfsClient:
    """Opens one channel lazily and exposes the server's RPCs as plain Python calls."""

    def __init__(self, address: str, timeout_s: float = 30.0, security: ChannelSecurity | None = None) -> None:
        """``address``: ``host:port`` or ``https://host:port`` (TLS); ``security``: token and CA
        (default: the process default, see :func:`mxfs.rpc.channel.default_security`)."""
        self.address = address
        self.security = security
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: mxfs_pb2_grpc.MxfsServiceStub | None = None
        self._health: health_grpc.HealthServiceStub | None = None

    def _stubs(self) -> tuple[mxfs_pb2_grpc.MxfsServiceStub, health_grpc.HealthServiceStub]:
        with self._lock:
            if self._channel is None:
                self._channel = open_channel(self.address, self.security)
                self._stub = mxfs_pb2_grpc.MxfsServiceStub(self._channel)
                self._read_range = self._channel.unary_stream(
                    READ_RANGE_METHOD, request_serializer=mxfs_pb2.RangeRequest.SerializeToString,
                    response_deserializer=decode_chunk, _registered_method=True)
                self._health = health_grpc.HealthServiceStub(self._channel)
            assert self._stub is not None and self._health is not None
            return self._stub, self._health

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = self._health = None

    def health(self, timeout_s: float | None = None) -> Health:
        _, stub = self._stubs()
        try:
            r = stub.GetHealth(health_pb2.HealthRequest(), timeout=self.timeout_s if timeout_s is None else timeout_s)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "health") from exc
        return Health(r.version, r.status, r.uptime)

    def data_port(self) -> int:
        """Port of the server's HTTP data plane (0 when it has none)."""
        stub, _ = self._stubs()
        try:
            return stub.GetServerInfo(mxfs_pb2.ServerInfoRequest(), timeout=self.timeout_s).data_port
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return 0
            raise translate_rpc_error(exc, "server info") from exc

    def get_manifest(self, name: str, revision: str = "") -> Manifest:
        stub, _ = self._stubs()
        try:
            pb = stub.GetManifest(
                mxfs_pb2.ModelRequest(name=name, revision=revision), timeout=self.timeout_s
            )
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, f"manifest of {name}") from exc
        return validate_manifest(manifest_from_pb(pb), name, revision)

    def block_hashes(self, name: str, revision: str, path: str, first: int, count: int,
                     lookahead: int = 0) -> list[bytes]:
        """sha256 digests of blocks ``first..`` of a file (``b""`` for a lookahead one not known yet)."""
        stub, _ = self._stubs()
        req = mxfs_pb2.BlockHashesRequest(name=name, revision=revision, path=path, first=first, count=count,
                                          lookahead=lookahead)
        try:
            return list(stub.GetBlockHashes(req, timeout=self.timeout_s).hashes)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, f"block hashes of {name}/{path}") from exc

    def list_models(self) -> list[ModelSummary]:
        stub, _ = self._stubs()
        try:
            reply = stub.ListModels(mxfs_pb2.ListModelsRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "list models") from exc
        return [
            ModelSummary(m.name, m.revision, m.total_size, m.file_count, m.origin, m.last_used_unix)
            for m in reply.models
        ]

    def iter_range(
        self, name: str, revision: str, path: str, offset: int, length: int,
        timeout_s: float | None = None,
    ) -> Iterator[tuple[int, memoryview]]:
        """Stream ``(offset, data)`` chunks of a byte range (data parsed without a copy)."""
        self._stubs()
        req = mxfs_pb2.RangeRequest(
            name=name, revision=revision, path=path, offset=offset, length=length,
            chunk_size=min(length, MAX_CHUNK_BYTES),
        )
        try:
            yield from self._read_range(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, f"read {name}/{path}@{offset}") from exc

    def read_range(
        self, name: str, revision: str, path: str, offset: int, length: int,
        timeout_s: float | None = None,
    ) -> bytearray:
        """A byte range as one buffer, assembled without intermediate copies."""
        buf = bytearray(length)
        view = memoryview(buf)
        got = 0
        for chunk_offset, data in self.iter_range(name, revision, path, offset, length, timeout_s):
            pos = chunk_offset - offset
            if pos != got or pos + len(data) > length:
                raise BlockUnavailable(f"server sent chunk at {chunk_offset}, expected {offset + got}")
            view[pos : pos + len(data)] = data
            got += len(data)
        if got != length:
            raise BlockUnavailable(f"short read of {path}: {got} of {length} bytes")
        return buf
