"""The one place where failures become gRPC status codes (CSI v1 error tables)."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from mxfs.errors import InvalidModelName

log = logging.getLogger(__name__)

# errno -> (status code, what it means for the caller). Anything else is INTERNAL.
_ERRNO_CODES: dict[int, grpc.StatusCode] = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.ENOTCONN: grpc.StatusCode.UNAVAILABLE,  # the node daemon died under its mount
    errno.ECONNABORTED: grpc.StatusCode.UNAVAILABLE,
    errno.ECONNREFUSED: grpc.StatusCode.UNAVAILABLE,
    errno.EIO: grpc.StatusCode.UNAVAILABLE,  # the daemon could not fetch the bytes
    errno.ETIMEDOUT: grpc.StatusCode.UNAVAILABLE,
    errno.EAGAIN: grpc.StatusCode.UNAVAILABLE,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EBUSY: grpc.StatusCode.FAILED_PRECONDITION,
    errno.ENOTEMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    errno.ENOTDIR: grpc.StatusCode.FAILED_PRECONDITION,
    errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    errno.ENAMETOOLONG: grpc.StatusCode.INVALID_ARGUMENT,
}


class CsiError(Exception):
    """A request failed with a specific gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> CsiError:
    """A required field is missing, or a field holds a value the plugin cannot use."""
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> CsiError:
    """The volume (model, revision or published path) does not exist."""
    return CsiError(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> CsiError:
    """Something incompatible is already published at the target path."""
    return CsiError(grpc.StatusCode.ALREADY_EXISTS, message)


def failed_precondition(message: str) -> CsiError:
    """The request exceeds the volume's capabilities (e.g. asks to write)."""
    return CsiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> CsiError:
    """The node mount is not serving; the caller retries with back-off."""
    return CsiError(grpc.StatusCode.UNAVAILABLE, message)


def from_os_error(exc: OSError, doing: str) -> CsiError:
    """Map an OSError raised while ``doing`` something to a status code."""
    code = _ERRNO_CODES.get(exc.errno or 0, grpc.StatusCode.INTERNAL)
    return CsiError(code, f"{doing}: {exc.strerror or exc}")


def is_stale(exc: OSError) -> bool:
    """True for the errors a mount left behind by a dead FUSE daemon answers with."""
    return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)


F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """Wrap a servicer method: typed failures become the matching gRPC status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        name = method.__name__
        try:
            result = method(self, request, context)
        except CsiError as exc:
            error = exc
        except InvalidModelName as exc:
            error = invalid_argument(str(exc))
        except OSError as exc:
            error = from_os_error(exc, name)
        else:
            log.debug("%s ok", name)
            return result
        log.warning("%s failed: %s %s", name, error.code.name, error.message)
        context.abort(error.code, error.message)

    return wrapper  # type: ignore[return-value]
