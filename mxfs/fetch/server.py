"""Tier: block ranges from the mxfs server, over its HTTP data plane when it has one
(zero-copy on the server side; HTTPS when the gRPC address is TLS, with the cluster token
when there is one), else over gRPC ``ReadRange``."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import trio

from mxfs.errors import BlockUnavailable
from mxfs.fetch.threads import in_thread
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.rpc.channel import default_security, parse_address
from mxfs.rpc.client import MxfsClient
from mxfs.rpc.http_range import HttpRangeClient, tls_client_context

log = logging.getLogger(__name__)


class ServerTier:
    """Reads one block in a worker thread, bounded by a deadline."""

    name = "server"

    def __init__(self, client: MxfsClient, limiter: trio.CapacityLimiter, timeout_s: float) -> None:
        self.client = client
        self.limiter = limiter
        self.timeout_s = timeout_s
        self._http: HttpRangeClient | None = None
        self._probed = False
        self._lock = threading.Lock()

    def _data_plane(self) -> HttpRangeClient | None:
        with self._lock:
            if not self._probed:
                address, tls = parse_address(self.client.address)
                port = self.client.data_port()  # raises BlockUnavailable while the server is away
                self._probed = True
                if port and not address.startswith("unix:"):
                    try:
                        self._http = self._http_client(address.rsplit(":", 1)[0].strip("[]"), port, tls)
                        log.info("server data plane at %s", self._http.url)
                    except ValueError as exc:
                        log.warning("server data plane unusable (%s); blocks go over gRPC", exc)
            return self._http

    def _http_client(self, host: str, port: int, tls: bool) -> HttpRangeClient:
        """The data plane speaks TLS exactly when the server's gRPC port does (same certificate),
        and gets the same token and CA as the gRPC channel."""
        sec = self.client.security or default_security()
        context = tls_client_context(sec.ca_file) if tls else None
        return HttpRangeClient(host, port, self.timeout_s, tls=context, server_name=sec.server_name, token=sec.token)

    def _read(self, manifest: Manifest, path: str, offset: int, length: int) -> bytearray:
        http = self._data_plane()
        if http is not None:
            try:
                return http.read_range(manifest.name, manifest.revision, path, offset, length)
            except BlockUnavailable as exc:
                log.debug("data plane failed (%s); using gRPC", exc)
        return self.client.read_range(manifest.name, manifest.revision, path, offset, length, self.timeout_s)

    def _read_to_file(self, manifest: Manifest, path: str, offset: int, length: int, fd: int,
                      write_lock: threading.Lock, check: Callable[[], bool]) -> bool:
        http = self._data_plane()
        if http is not None:
            try:
                http.read_range_to_file(manifest.name, manifest.revision, path, offset, length, fd, offset, write_lock)
                return check()
            except BlockUnavailable as exc:
                log.debug("data plane failed (%s); using gRPC", exc)
        data = memoryview(self.client.read_range(manifest.name, manifest.revision, path, offset, length,
                                                 self.timeout_s))
        with write_lock:
            while data:
                n = os.pwrite(fd, data, offset)
                data, offset = data[n:], offset + n
        return check()

    async def fetch_to_file(self, manifest: Manifest, entry: FileEntry, index: int, fd: int,
                            write_lock: threading.Lock, check: Callable[[], bool]) -> bool:
        """Block ``index`` written to its place in ``fd`` (the blob being hydrated) by the
        kernel, never through this process; returns ``check()`` (the caller's verification
        of what landed), run in the same worker thread. Not abandoned on cancel: the thread
        writes to ``fd`` until it returns."""
        offset, length = entry.block_span(index, manifest.block_size)
        return await in_thread(self._read_to_file, manifest, entry.path, offset, length, fd, write_lock, check,
                               limiter=self.limiter)

    async def fetch(self, manifest: Manifest, entry: FileEntry, index: int) -> bytearray:
        offset, length = entry.block_span(index, manifest.block_size)
        return await in_thread(self._read, manifest, entry.path, offset, length,
                               limiter=self.limiter, abandon=True)

    def quarantine(self, manifest: Manifest, entry: FileEntry, index: int) -> None:
        """The server is the last tier; a bad block from it is only logged by the chain."""
