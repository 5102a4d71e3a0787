"""Tier: block ranges from the mxfs server, over its HTTP data plane when it has one
(zero-copy on the server side), else over gRPC ``ReadRange``."""

from __future__ import annotations

import logging
import threading

import trio

from mxfs.errors import BlockUnavailable
from mxfs.fetch.threads import in_thread
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.rpc.channel import normalize_address
from mxfs.rpc.client import MxfsClient
from mxfs.rpc.http_range import HttpRangeClient

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
                address = normalize_address(self.client.address)
                port = self.client.data_port()  # raises BlockUnavailable while the server is away
                self._probed = True
                if port and not address.startswith("unix:"):
                    host = address.rsplit(":", 1)[0].strip("[]")
                    self._http = HttpRangeClient(host, port, self.timeout_s)
                    log.info("server data plane at %s:%d", host, port)
            return self._http

    def _read(self, manifest: Manifest, path: str, offset: int, length: int) -> bytearray:
        http = self._data_plane()
        if http is not None:
            try:
                return http.read_range(manifest.name, manifest.revision, path, offset, length)
            except BlockUnavailable as exc:
                log.debug("data plane failed (%s); using gRPC", exc)
        return self.client.read_range(manifest.name, manifest.revision, path, offset, length, self.timeout_s)

    def _read_into(self, manifest: Manifest, path: str, offset: int, view: memoryview) -> None:
        http = self._data_plane()
        if http is not None:
            try:
                http.read_range_into(manifest.name, manifest.revision, path, offset, view)
                return
            except BlockUnavailable as exc:
                log.debug("data plane failed (%s); using gRPC", exc)
        view[:] = self.client.read_range(manifest.name, manifest.revision, path, offset, len(view), self.timeout_s)

    async def fetch_into(self, manifest: Manifest, entry: FileEntry, index: int, view: memoryview) -> None:
        """Block ``index`` received straight into ``view`` (unverified; the caller checks it).
        Not abandoned on cancel: the thread owns ``view`` until it returns."""
        offset, length = entry.block_span(index, manifest.block_size)
        if len(view) != length:
            raise ValueError(f"view of {len(view)} bytes for a block of {length}")
        await in_thread(self._read_into, manifest, entry.path, offset, view, limiter=self.limiter)

    async def fetch(self, manifest: Manifest, entry: FileEntry, index: int) -> bytearray:
        offset, length = entry.block_span(index, manifest.block_size)
        return await in_thread(self._read, manifest, entry.path, offset, length,
                               limiter=self.limiter, abandon=True)

    def quarantine(self, manifest: Manifest, entry: FileEntry, index: int) -> None:
        """The server is the last tier; a bad block from it is only logged by the chain."""
