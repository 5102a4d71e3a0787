"""Bulk data plane: the same verified-manifest byte ranges as ``ReadRange``, over HTTP/1.1.

gRPC in Python copies every block several times; here the server answers
``GET /v1/range?model=ORG/NAME&revision=REV&path=P&offset=N&length=M`` with ``sendfile``
straight from the origin file, the server's hydrated copy, or its block store (lazy
files, each block verified once by the store), else from bytes, on keep-alive
connections. Manifests and all control calls stay on gRPC.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, catalog: ModelCatalog, metrics: ServerMetrics, chunk_size: int,
                 timeout_s: float = IO_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.chunk_size = chunk_size
        self.timeout_s = timeout_s
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

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="mxfs-data", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeServer

    def setup(self) -> None:
        self.timeout = self.server.timeout_s  # socket timeout on every read and write of this connection
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("data %s - %s", self.address_string(), format % args)

    def _fail(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        metrics = self.server.metrics
        metrics.requests.labels("HttpRange").inc()
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
        """A lazy file's range block by block: ``sendfile`` from the server's block store
        (each block verified once by the store, pinned while it is sent)."""
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
