"""Client of the server's bulk data plane (``GET /v1/range``): one keep-alive connection
per thread, bodies read straight into a preallocated buffer; HTTPS and the cluster token
when the server asks for them."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import select
import ssl
import threading
from collections.abc import Callable
from urllib.parse import urlencode

from mxfs.errors import BlockUnavailable, InvalidModelName, ManifestError, ModelNotFound

MAX_ERROR_BODY = 4096  # bytes of an error answer kept for the message
SPLICE_PIPE = 1 << 20  # bytes per splice hop from the socket to the file
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

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

    def _pipe(self) -> tuple[int, int]:
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:
            pipe = os.pipe2(os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # the default 64 KiB pipe still works, in more hops
                fcntl.fcntl(pipe[1], F_SETPIPE_SZ, SPLICE_PIPE)
            self._local.pipe = pipe
        return pipe

    def read_range_to_file(self, name: str, revision: str, path: str, offset: int, length: int, fd: int,
                           at: int, write_lock: threading.Lock) -> None:
        """Bytes ``[offset, offset+length)`` of ``path`` written to ``fd`` at ``at`` by the
        kernel: ``splice`` from the socket into a pipe and from the pipe into the file, so
        they are copied once, into the file's page cache, and never enter this process.
        Writes to ``fd`` take ``write_lock``. Over TLS (no splice) they are received into
        a buffer and written. Unverified: the caller checks what landed."""
        if self.tls is not None:
            buf = self.read_range(name, revision, path, offset, length)
            with write_lock:
                _write_all(fd, memoryview(buf), at)
            return
        self._request(name, revision, path, offset, length,
                      lambda resp, sock: self._splice_body(resp, sock, length, fd, at, write_lock))

    def _splice_body(self, resp: http.client.HTTPResponse, sock: object, length: int, fd: int, at: int,
                     write_lock: threading.Lock) -> int:
        """The body (``length`` bytes): what the response already buffered, then the socket."""
        head = resp.fp.peek(1)[:length] if length else b""  # bytes read with the headers
        if head:
            head = resp.fp.read(len(head))
            with write_lock:
                _write_all(fd, memoryview(head), at)
        got = len(head)
        r, w = self._pipe()
        sock_fd = sock.fileno()  # type: ignore[attr-defined]
        try:
            while got < length:
                try:
                    n = os.splice(sock_fd, w, min(SPLICE_PIPE, length - got))
                except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                    if not select.select([sock_fd], [], [], self.timeout_s)[0]:
                        raise TimeoutError(f"no data for {self.timeout_s:g}s") from None
                    continue
                if not n:
                    break
                with write_lock:
                    moved = 0
                    while moved < n:
                        moved += os.splice(r, fd, n - moved, offset_dst=at + got + moved)
                got += n
        except BaseException:
            os.close(r)  # the pipe may hold bytes of this body: never reuse it
            os.close(w)
            self._local.pipe = None
            raise
        resp.length = 0  # the body was taken from under http.client: let the connection be reused
        resp.close()
        return got

    def read_range_into(self, name: str, revision: str, path: str, offset: int, view: memoryview) -> None:
        """Bytes ``[offset, offset+len(view))`` of ``path`` received straight into ``view``
        (e.g. a slice of a mapping of the cache blob: no copy in Python)."""
        def body(resp: http.client.HTTPResponse, _sock: object) -> int:
            got = 0
            while got < len(view):
                n = resp.readinto(view[got:])
                if not n:
                    break
                got += n
            if got == len(view) and resp.read(1):
                return got + 1
            return got

        self._request(name, revision, path, offset, len(view), body)

    def _request(self, name: str, revision: str, path: str, offset: int, length: int,
                 body: Callable[[http.client.HTTPResponse, object], int]) -> None:
        """GET the range; ``body(response, socket)`` takes its ``length`` bytes and returns how
        many it got."""
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
                if resp.length != length:
                    self._drop()
                    raise BlockUnavailable(f"data plane sent {resp.length} bytes for {path}@{offset}+{length}")
                got = body(resp, conn.sock)
                if got != length:
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


def _write_all(fd: int, view: memoryview, at: int) -> None:
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n
