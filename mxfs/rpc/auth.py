"""The cluster token, checked in one place: a gRPC server interceptor.

Every mutating RPC (publishing weight sources, holder announcements, model download and
delete, node control) is listed in :data:`MUTATING_METHODS` by its full wire name. A
server with a token refuses those calls with ``UNAUTHENTICATED`` unless they carry the
token (``authorization: Bearer <token>``, or the peer cache's ``x-mxfs-peer-token``);
read-only calls stay open to unmodified ModelExpress clients unless the operator asks
for the token on reads too. A service added later only adds its names here.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from mxfs import envs

log = logging.getLogger(__name__)

AUTH_METADATA = "authorization"
PEER_TOKEN_METADATA = "x-mxfs-peer-token"

#: full gRPC method names that change state; every one needs the cluster token
MUTATING_METHODS: frozenset[str] = frozenset({
    # GPU weight sources: the ModelExpress P2P service (mxfs's loader uses it too)
    "/model_express.p2p.P2pService/PublishMetadata",
    "/model_express.p2p.P2pService/UpdateStatus",
    # node-cache block holders
    "/mxfs.v1.BlockHolders/Announce",
    "/mxfs.v1.BlockHolders/Withdraw",
    # ModelExpress model service: downloads fill the server's disk, delete removes models
    "/model_express.model.ModelService/EnsureModelDownloaded",
    "/model_express.model.ModelService/DeleteModel",
    # node control
    "/mxfs.v1.NodeControl/Prefetch",
})

#: never need the token (liveness probes)
OPEN_METHODS: frozenset[str] = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/model_express.health.HealthService/GetHealth",
})


def load_token(token: str = "", token_file: str = "") -> str:
    """The cluster token: ``token_file`` (first line, stripped) wins over ``token``.

    Without arguments, ``MX_AUTH_TOKEN_FILE`` then ``MX_AUTH_TOKEN``.
    """
    if not token and not token_file:
        token_file, token = envs.MX_AUTH_TOKEN_FILE.get() or "", envs.MX_AUTH_TOKEN.get() or ""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the auth token file {token_file}: {exc}") from exc
        if not token:
            raise ValueError(f"the auth token file {token_file} is empty")
    return token


def presented_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token a call carries (bearer or peer header), or None."""
    for key, value in metadata or ():
        if key == AUTH_METADATA:
            scheme, _, rest = str(value).partition(" ")
            if scheme.lower() == "bearer":
                return rest.strip()
        elif key == PEER_TOKEN_METADATA:
            return str(value)
    return None


def token_matches(presented: str | None, token: str) -> bool:
    """Constant-time compare; an empty expected token never matches."""
    return bool(token) and presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def _refuse(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    message = f"{method} needs the cluster token (authorization: Bearer <token>)"

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses mutating calls (and, with ``reads``, every call but health) without the token."""

    def __init__(self, token: str, reads: bool = False, mutating: frozenset[str] = MUTATING_METHODS) -> None:
        if not token:
            raise ValueError("TokenInterceptor needs a non-empty token")
        self.token = token
        self.reads = reads
        self.mutating = mutating
        self.refused = 0

    def needs_token(self, method: str) -> bool:
        return method in self.mutating or (self.reads and method not in OPEN_METHODS)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or not self.needs_token(details.method):
            return handler
        if token_matches(presented_token(details.invocation_metadata), self.token):
            return handler
        self.refused += 1
        log.warning("refused %s: missing or wrong cluster token", details.method)
        return _refuse(handler, details.method)


def server_interceptors(token: str, reads: bool = False) -> list[grpc.ServerInterceptor]:
    """The interceptors a gRPC server is built with (none, and a warning, without a token)."""
    if not token:
        log.warning("no cluster token (--auth-token-file / MX_AUTH_TOKEN): mutating RPCs are open to anyone "
                    "who reaches this port")
        return []
    return [TokenInterceptor(token, reads)]


class _ClientToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._pair = (AUTH_METADATA, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._pair]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` sending the cluster token on every call (unchanged without a token)."""
    return grpc.intercept_channel(channel, _ClientToken(token)) if token else channel
