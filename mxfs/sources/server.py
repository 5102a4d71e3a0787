"""Tier: block ranges from the mxfs server over gRPC."""

from __future__ import annotations

import trio

from mxfs.manifest.model import FileEntry, Manifest
from mxfs.rpc.client import MxfsClient
from mxfs.sources.threads import in_thread


class ServerTier:
    """Reads one block with a ReadRange stream, in a worker thread, bounded by a deadline."""

    name = "server"

    def __init__(self, client: MxfsClient, limiter: trio.CapacityLimiter, timeout_s: float) -> None:
        self.client = client
        self.limiter = limiter
        self.timeout_s = timeout_s

    async def fetch(self, manifest: Manifest, entry: FileEntry, index: int) -> bytearray:
        offset, length = entry.block_span(index, manifest.block_size)
        return await in_thread(
            self.client.read_range, manifest.name, manifest.revision, entry.path, offset, length,
            self.timeout_s, limiter=self.limiter, abandon=True,
        )

    def quarantine(self, manifest: Manifest, entry: FileEntry, index: int) -> None:
        """The server is the last tier; a bad block from it is only logged by the chain."""
