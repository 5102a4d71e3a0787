"""The shared cluster token on peer and holder-registry calls."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc

from mxfs.rpc.auth import PEER_TOKEN_METADATA, presented_token, token_matches

TOKEN_METADATA = PEER_TOKEN_METADATA


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata to send with every peer / registry call."""
    return ((TOKEN_METADATA, token),)


def token_ok(context: grpc.ServicerContext, token: str) -> bool:
    """True when the call carries ``token`` (peer header or bearer; constant-time compare)."""
    return token_matches(presented_token(context.invocation_metadata()), token)


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
