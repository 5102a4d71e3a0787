"""All mapping from mxfs failures to errno values, in one place."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from mxfs.errors import (
    BlockUnavailable,
    IntegrityError,
    InvalidModelName,
    ManifestError,
    ModelNotFound,
    SourceError,
)
from mxfs.fuse.interface import FuseError

log = logging.getLogger(__name__)

ERRNO_OF: list[tuple[type[BaseException], int]] = [
    (InvalidModelName, errno.ENOENT),
    (ModelNotFound, errno.ENOENT),
    (ManifestError, errno.EIO),
    (IntegrityError, errno.EIO),
    (BlockUnavailable, errno.EIO),
    (SourceError, errno.EIO),
    (trio.TooSlowError, errno.EIO),
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    for kind, code in ERRNO_OF:
        if isinstance(exc, kind):
            return code
    return None


def translated(op: str) -> Callable[[F], F]:
    """Turn mxfs errors raised by a FUSE handler method into one FuseError.

    The error is logged and reported to ``self.on_error(op, errno)`` when set.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def handler(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(self, *args, **kwargs)
            except FuseError:
                raise
            except Exception as exc:
                code = errno_of(exc)
                if code is None:
                    log.exception("%s failed unexpectedly", op)
                    code = errno.EIO
                elif code != errno.ENOENT:
                    log.warning("%s: %s: %s", op, errno.errorcode.get(code, code), exc)
                on_error: Callable[[str, int], None] | None = getattr(self, "on_error", None)
                if on_error is not None:
                    on_error(op, code)
                raise FuseError(code) from exc

        return handler  # type: ignore[return-value]

    return wrap
