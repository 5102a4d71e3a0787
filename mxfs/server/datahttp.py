"""Bulk data plane: the same verified-manifest byte ranges as ``ReadRange``, over HTTP/1.1.

gRPC in Python copies every block several times; here the server answers
``GET /v1/range?model=ORG/NAME&revision=REV&path=P&offset=N&length=M`` with ``sendfile``
straight from the origin file, the server's hydrated copy, or its block store (lazy
files, each block verified once by the store), else from bytes, on keep-alive
connections. Manifests and all control calls stay on gRPC.

With TLS (the gRPC port's certificate and key) the port speaks HTTPS: ``sendfile`` cannot
encrypt (no kTLS in Python 3.11's ``ssl``), so file bytes go through one bounded buffer per
connection (``pread`` + ``sendall``, measured faster than ``SSLSocket.sendfile``'s 8 KiB
reads, see docs/architecture.md). With a ``token`` every request must carry
``Authorization: Bearer <token>``: none is answered 401, a wrong one 403, and nothing is read.
"""

from __future__ import annotations

import logging
import os
import select
import ssl
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mxfs.rpc.auth import presented_token, token_matches
from mxfs.server.catalog import ModelCatalog
from mxfs.server.errors import http_status_of
from mxfs.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

RANGE_PATH = "/v1/range"
MAX_RANGE = 64 * 1024 * 1024
#: a connection idle (or stalled mid-request, or not reading) this long is closed
IO_TIMEOUT_S = 30.0
#: connections served at once (one thread each); more are answered 503 and closed
MAX_CONNECTIONS = 256
#: bytes encrypted per TLS write: 256 KiB-4 MiB measured alike, 8 KiB (SSLSocket.sendfile) 2x the CPU
TLS_SEND_BUFFER = 1024 * 1024
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, catalog: ModelCatalog, metrics: ServerMetrics, chunk_size: int,
                 timeout_s: float = IO_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                 tls: ssl.SSLContext | None = None, token: str = "") -> None:
        """``tls``: serve HTTPS with this server context; ``token``: every request needs it."""
        self.catalog = catalog
        self.metrics = metrics
        self.chunk_size = chunk_size
        self.timeout_s = timeout_s
        self.tls = tls
        self.token = token
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), RangeHandler)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """One thread per connection, at most ``max_connections`` of them; the rest get 503."""
        if not self._slots.acquire(blocking=False):
            self.metrics.errors.labels("HttpRange", "503").inc()
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """A client that hangs up, stalls or fails the TLS handshake is logged in one line, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.info("data plane: connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("data plane: request from %s failed", client_address[0])

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="mxfs-data", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: TCP_NODELAY: the headers go out in one write and the body in others; with Nagle on, a
    #: body smaller than a segment waited for the ACK of the headers, which the client delays
    #: (40 ms per small file on loopback: the first measured cost of a cold config.json)
    disable_nagle_algorithm = True
    server: RangeServer

    def setup(self) -> None:
        self.timeout = self.server.timeout_s  # socket timeout on every read and write of this connection
        if self.server.tls is not None:  # handshake here, in the connection's thread, bounded by the timeout
            self.request.settimeout(self.timeout)
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.server.tls is not None:
                self.request.close()  # the wrapped socket; the server closes only the plain one it accepted

    def log_message(self, format: str, *args: object) -> None:
        log.debug("data %s - %s", self.address_string(), format % args)

    def _fail(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="mxfs"')
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        """True when no token is needed or the request carries it; else answered 401/403."""
        if not self.server.token:
            return True
        header = self.headers.get("Authorization")
        presented = presented_token([("authorization", header)]) if header else None
        if token_matches(presented, self.server.token):
            return True
        status = HTTPStatus.UNAUTHORIZED if presented is None else HTTPStatus.FORBIDDEN
        self.server.metrics.errors.labels("HttpRange", str(int(status))).inc()
        log.warning("data plane: refused %s from %s: %s cluster token", self.command, self.address_string(),
                    "no" if presented is None else "wrong")
        self.close_connection = True
        self._fail(status, "this data plane needs the cluster token (Authorization: Bearer <token>)"
                   if presented is None else "wrong cluster token")
        return False

    def do_GET(self) -> None:
        metrics = self.server.metrics
        metrics.requests.labels("HttpRange").inc()
        if not self._authorized():
            return
        url = urlsplit(self.path)
        if url.path != RANGE_PATH:
            self._fail(HTTPStatus.NOT_FOUND, f"unknown path {url.path}")
            return
        try:
            q = {k: v[0] for k, v in parse_qs(url.query, strict_parsing=True).items()}
            offset, length = int(q["offset"]), int(q["length"])
            entry, f = self.server.catalog.file(q["model"], q["revision"], q["path"])
            path = f.path
            if offset < 0 or length < 0 or length > MAX_RANGE or offset + length > f.size:
                raise ValueError(f"range {offset}+{length} outside {path} ({f.size} bytes)")
            local: Path | None = getattr(entry.origin, "local_file", lambda m, p: None)(entry.manifest, path)
        except Exception as exc:  # every failure becomes one HTTP status (errors.http_status_of)
            status = HTTPStatus.BAD_REQUEST if isinstance(exc, KeyError) else http_status_of(exc)
            metrics.errors.labels("HttpRange", str(int(status))).inc()
            self._fail(status, str(exc) if not isinstance(exc, KeyError) else f"missing parameter {exc}")
            return
        manifest, origin = entry.manifest, entry.origin
        metrics.blocks_served.inc(len(f.blocks_for(offset, length, manifest.block_size)))
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()
        if local is not None:
            self._sendfile(local, offset, length)
        elif getattr(origin, "lazy_block", None) is not None and f.lazy:
            self._send_lazy(origin, manifest, f, offset, length)
        else:
            pos, end = offset, offset + length
            while pos < end:
                data = origin.read_range(manifest, path, pos, min(self.server.chunk_size, end - pos))
                self.wfile.write(data)
                metrics.bytes_served.inc(len(data))
                pos += len(data)

    def _send_lazy(self, origin, manifest, f, offset: int, length: int) -> None:
        """A lazy file's range block by block, each pinned while it is sent: from the buffer
        it was just received and hashed in, else ``sendfile`` from the server's block store
        (verified once when read back)."""
        bs, end = manifest.block_size, offset + length
        try:
            for index in f.blocks_for(offset, length, bs):
                b_start = index * bs
                lo, hi = max(offset, b_start), min(end, b_start + bs)
                with origin.lazy_block(manifest, f.path, index) as got:
                    if isinstance(got, tuple):
                        blob, _, _ = got
                        self._sendfile(blob, lo, hi - lo)
                    else:
                        self.wfile.write(memoryview(got)[lo - b_start: hi - b_start])
                        self.server.metrics.bytes_served.inc(hi - lo)
        except Exception as exc:  # headers are out: a short body tells the client to retry
            log.warning("data plane: %s/%s@%d+%d failed mid-body: %s", manifest.name, f.path, offset, length, exc)
            self.close_connection = True

    def _sendfile(self, local: Path, offset: int, length: int) -> None:
        fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if self.server.tls is not None:
                self._send_encrypted(fd, local, offset, length)
                return
            sent = 0
            out = self.connection.fileno()
            while sent < length:
                try:
                    n = os.sendfile(out, fd, offset + sent, length - sent)
                except BlockingIOError:  # the socket has a timeout, so it is non-blocking underneath
                    if not select.select([], [out], [], self.timeout)[1]:
                        raise TimeoutError(f"client did not read for {self.timeout}s") from None
                    continue
                if n == 0:
                    raise OSError(f"{local} is shorter than its manifest")
                sent += n
                self.server.metrics.bytes_served.inc(n)
        except OSError:
            self.close_connection = True  # the client sees a short body and retries elsewhere
            raise
        finally:
            os.close(fd)

    def _send_encrypted(self, fd: int, local: Path, offset: int, length: int) -> None:
        """``[offset, offset+length)`` of ``fd`` over TLS through one reused buffer."""
        buf = getattr(self, "_tls_buffer", None)
        if buf is None:
            buf = self._tls_buffer = memoryview(bytearray(TLS_SEND_BUFFER))
        sent = 0
        while sent < length:
            n = os.preadv(fd, [buf[: min(len(buf), length - sent)]], offset + sent)
            if n == 0:
                raise OSError(f"{local} is shorter than its manifest")
            self.connection.sendall(buf[:n])
            sent += n
            self.server.metrics.bytes_served.inc(n)
