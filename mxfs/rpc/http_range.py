"""Client of the server's bulk data plane (``GET /v1/range``): one keep-alive connection
per thread, bodies read straight into a preallocated buffer; HTTPS and the cluster token
when the server asks for them."""

from __future__ import annotations

import http.client
import ssl
import threading
from urllib.parse import urlencode

from mxfs.errors import BlockUnavailable, InvalidModelName, ManifestError, ModelNotFound

MAX_ERROR_BODY = 4096  # bytes of an error answer kept for the message

_ERRORS: dict[int, type[Exception]] = {400: InvalidModelName, 404: ModelNotFound, 412: ManifestError}


def tls_client_context(ca_file: str = "") -> ssl.SSLContext:
    """Verifying client context: ``ca_file`` (PEM) as the roots, else the system's."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS CA file {ca_file}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _TlsConnection(http.client.HTTPConnection):
    """HTTPS with the certificate checked against ``server_name`` (the gRPC override) or the host."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context, self._server_name = context, server_name or host

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


class HttpRangeClient:
    def __init__(self, host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None,
                 server_name: str = "", token: str = "") -> None:
        """``tls``: speak HTTPS with this client context (``server_name``: the name its certificate must
        carry, default ``host``); ``token``: sent as ``Authorization: Bearer``."""
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.tls, self.server_name = tls, server_name
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.tls is not None:
                conn = _TlsConnection(self.host, self.port, self.timeout_s, self.tls, self.server_name)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
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
                conn.request("GET", f"/v1/range?{query}", headers=self._headers)
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
                    raise BlockUnavailable(f"data plane {self.url}: {exc}") from exc
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self._drop()
                raise BlockUnavailable(f"data plane {self.url}: {exc}") from exc
        raise AssertionError("unreachable")
