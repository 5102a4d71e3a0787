"""One place that turns mxfs errors into gRPC status codes for every servicer."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from mxfs.errors import (
    BlockUnavailable,
    InvalidModelName,
    ManifestError,
    ModelNotFound,
    OriginDenied,
    SourceError,
)
from mxfs.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

STATUS_OF: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidModelName, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (OriginDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ManifestError, grpc.StatusCode.FAILED_PRECONDITION),
    (BlockUnavailable, grpc.StatusCode.UNAVAILABLE),
    (SourceError, grpc.StatusCode.UNAVAILABLE),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (OSError, grpc.StatusCode.INTERNAL),
]


HTTP_OF: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def http_status_of(exc: BaseException) -> int:
    """The HTTP status of an error on the bulk data plane (same mapping as gRPC)."""
    return HTTP_OF.get(status_of(exc), 500)


def status_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def rpc(method: str, streaming: bool = False) -> Callable:
    """Count, time and translate errors of one servicer method (uses ``self.metrics``)."""

    def wrap(fn: Callable) -> Callable:
        def fail(metrics: ServerMetrics, context: grpc.ServicerContext, exc: Exception) -> None:
            code = status_of(exc)
            metrics.errors.labels(method, code.name).inc()
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
            else:
                log.info("%s: %s: %s", method, code.name, exc)
            context.abort(code, str(exc))

        if streaming:

            @functools.wraps(fn)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                metrics: ServerMetrics = self.metrics
                metrics.requests.labels(method).inc()
                start = time.monotonic()
                try:
                    yield from fn(self, request, context)
                except Exception as exc:  # translated to a status, never swallowed
                    fail(metrics, context, exc)
                finally:
                    metrics.latency.labels(method).observe(time.monotonic() - start)

            return stream

        @functools.wraps(fn)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            metrics: ServerMetrics = self.metrics
            metrics.requests.labels(method).inc()
            with metrics.latency.labels(method).time():
                try:
                    return fn(self, request, context)
                except Exception as exc:  # translated to a status, never swallowed
                    fail(metrics, context, exc)

        return unary

    return wrap
