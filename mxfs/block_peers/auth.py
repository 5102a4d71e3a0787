"""The shared cluster token on peer and holder-registry calls."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

import grpc

TOKEN_METADATA = "x-mxfs-peer-token"


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata to send with every peer / registry call."""
    return ((TOKEN_METADATA, token),)


def token_ok(context: grpc.ServicerContext, token: str) -> bool:
    """True when the call carries ``token`` (constant-time compare); an empty token never matches."""
    if not token:
        return False
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA:
            return hmac.compare_digest(str(value).encode(), token.encode())
    return False


def require_token(context: grpc.ServicerContext, token: str) -> None:
    """Abort the call with UNAUTHENTICATED unless it carries the cluster token."""
    if not token_ok(context, token):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")


def token_required(fn: Callable) -> Callable:
    """Servicer-method decorator: check ``self.token`` before anything else runs.

    Put it outermost (above ``@rpc``) so the abort is not re-translated into INTERNAL.
    """

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        require_token(context, self.token)
        return fn(self, request, context)

    return wrapper
