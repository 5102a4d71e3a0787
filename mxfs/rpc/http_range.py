"""Client of the server's bulk data plane (``GET /v1/range``): one keep-alive connection
per thread, bodies read straight into a preallocated buffer."""

from __future__ import annotations

import http.client
import threading
from urllib.parse import urlencode

from mxfs.errors import BlockUnavailable, InvalidModelName, ManifestError, ModelNotFound

MAX_ERROR_BODY = 4096  # bytes of an error answer kept for the message

_ERRORS: dict[int, type[Exception]] = {400: InvalidModelName, 404: ModelNotFound, 412: ManifestError}


class HttpRangeClient:
    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def read_range(self, name: str, revision: str, path: str, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.read_range_into(name, revision, path, offset, memoryview(buf))
        return buf

    def read_range_into(self, name: str, revision: str, path: str, offset: int, view: memoryview) -> None:
        """Bytes ``[offset, offset+len(view))`` of ``path`` received straight into ``view``
        (e.g. a slice of a mapping of the cache blob: no copy in Python)."""
        length = len(view)
        query = urlencode({"model": name, "revision": revision, "path": path, "offset": offset, "length": length})
        for attempt in (0, 1):  # a keep-alive connection the server closed: retry once on a new one
            conn = self._conn()
            try:
                conn.request("GET", f"/v1/range?{query}")
                resp = conn.getresponse()
                if resp.status != 200:
                    message = resp.read(MAX_ERROR_BODY).decode(errors="replace")
                    self._drop()  # the rest of a long error body is never read
                    raise _ERRORS.get(resp.status, BlockUnavailable)(f"data plane {resp.status}: {message}")
                got = 0
                while got < length:
                    n = resp.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got != length or resp.read(1):
                    self._drop()
                    raise BlockUnavailable(f"short body for {path}@{offset}: {got} of {length} bytes")
                return
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if attempt:
                    raise BlockUnavailable(f"data plane {self.host}:{self.port}: {exc}") from exc
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self._drop()
                raise BlockUnavailable(f"data plane {self.host}:{self.port}: {exc}") from exc
        raise AssertionError("unreachable")
