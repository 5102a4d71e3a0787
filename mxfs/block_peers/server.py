"""The peer block service of a daemon: serves blocks from its own cache, nothing else.

Lookups are by content address only (file sha256, block size, index) and go through the
cache index, so no request can name a path. Bytes are served as stored: the reader
verifies every block against its manifest (a corrupt cache is caught there and the
serving node is quarantined). Concurrency is bounded by a fixed thread pool and
``maximum_concurrent_rpcs`` (extra calls get RESOURCE_EXHAUSTED); memory by
concurrency x block size (a block up to 4 MiB goes out as one message). With ``fetch``
(swarm pull-through) a missing block is first fetched through the node's own chain,
from the server only.

Upload slots: at most ``upload_slots`` held blocks go out at once; a request beyond that is
refused at once as busy (RESOURCE_EXHAUSTED), so the asker takes another holder or another
block instead of queueing behind a saturated uplink. Measured on the emulated fleet: without
the limit a block nobody else held yet drew every node's requests to its one holder, whose
uplink then took longer than the peer read timeout (5 s) for each, and the timeouts went to
the server (1.18 copies of egress at 8 nodes). Pull-throughs are bounded separately.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from prometheus_client import CollectorRegistry, Counter

from mxfs.block_peers.auth import token_required
from mxfs.block_peers.client import PullThrough
from mxfs.cache.blocks import BlockCache
from mxfs.errors import MxfsError
from mxfs.manifest.model import BlockKey
from mxfs.rpc import peer_pb2, peer_pb2_grpc
from mxfs.rpc.channel import CHANNEL_OPTIONS, read_pem

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
MAX_BLOCK = 64 * 1024 * 1024
_SHA = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_SLOTS = 8

#: ``pull(key, length, PullThrough) -> bytes``: fetch a block through the node's chain (server only)
Pull = Callable[[BlockKey, int, PullThrough], "bytes | bytearray"]


def block_key(ref: peer_pb2.BlockRef) -> BlockKey:
    """Validate a requested block address (raises ValueError)."""
    bs = ref.block_size
    if not _SHA.match(ref.sha256) or bs <= 0 or bs & (bs - 1) or bs > MAX_BLOCK:
        raise ValueError("invalid block address")
    if not 0 < ref.length <= bs:
        raise ValueError("invalid block length")
    return BlockKey(ref.sha256, bs, ref.index)


class PeerBlockServicer(peer_pb2_grpc.PeerBlocksServicer):
    def __init__(self, cache: BlockCache, token: str, pull: Pull | None,
                 registry: CollectorRegistry | None = None, upload_slots: int = UPLOAD_SLOTS) -> None:
        self.cache = cache
        self.token = token
        self.pull = pull
        self._slots = threading.BoundedSemaphore(upload_slots)
        r = registry or CollectorRegistry()
        self.served = Counter("mxfs_node_peer_served_bytes", "block bytes served to peers", registry=r)
        self.requests = Counter("mxfs_node_peer_requests", "peer block requests", ["result"], registry=r)

    @token_required
    def ReadBlock(self, request: peer_pb2.PeerBlockRequest, context: grpc.ServicerContext) -> Iterator[
            peer_pb2.PeerChunk]:
        try:
            key = block_key(request.block)
        except ValueError as exc:
            self.requests.labels("invalid").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        length = request.block.length
        if request.fetch and not self.cache.contains(key):
            yield from self._pull_and_send(key, length, request, context)
            return
        if not self._slots.acquire(blocking=False):
            self.requests.labels("busy").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy: every upload slot is in use")
        try:
            data = self.cache.read(key, length)
            if data is None:
                self.requests.labels("miss").inc()
                context.abort(grpc.StatusCode.NOT_FOUND, f"block {key} not held here")
            self.requests.labels("hit").inc()
            yield from self._send(data, context)
        finally:
            self._slots.release()

    def _pull_and_send(self, key: BlockKey, length: int, request: peer_pb2.PeerBlockRequest,
                       context: grpc.ServicerContext) -> Iterator[peer_pb2.PeerChunk]:
        """Swarm pull-through: fetch a block this node does not hold (from the server) and pass it on."""
        if self.pull is None:
            self.requests.labels("miss").inc()
            context.abort(grpc.StatusCode.NOT_FOUND, f"block {key} not held here")
        try:
            data = self.pull(key, length, PullThrough(request.name, request.revision, request.path))
        except (MxfsError, ValueError) as exc:
            self.requests.labels("pull_failed").inc()
            context.abort(grpc.StatusCode.NOT_FOUND, f"pull-through of {key} failed: {exc}")
        self.requests.labels("pulled").inc()
        yield from self._send(data, context)

    def _send(self, data: bytes | bytearray, context: grpc.ServicerContext) -> Iterator[peer_pb2.PeerChunk]:
        if len(data) <= CHUNK:  # the usual case: one message, no extra copy
            yield peer_pb2.PeerChunk(offset=0, data=bytes(data))
            self.served.inc(len(data))
            return
        view = memoryview(data)
        for pos in range(0, len(view), CHUNK):
            if not context.is_active():
                return
            part = view[pos : pos + CHUNK]
            yield peer_pb2.PeerChunk(offset=pos, data=bytes(part))
            self.served.inc(len(part))


def serve(host: str, port: int, servicer: PeerBlockServicer, workers: int,
          tls: tuple[str, str] | None = None) -> grpc.Server:
    """Start the peer service on ``host:port``; at most ``workers`` requests run at once.

    ``tls``: (certificate file, key file) to serve TLS.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mxfs-peer"),
        # no SO_REUSEPORT: a peer port another process holds must fail, not be shared with it
        options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=workers * 2,
    )
    peer_pb2_grpc.add_PeerBlocksServicer_to_server(servicer, server)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is not None:
            creds = grpc.ssl_server_credentials([(read_pem(tls[1], "TLS key file"),
                                                  read_pem(tls[0], "TLS certificate"))])
            port = server.add_secure_port(bind, creds)
        else:
            port = server.add_insecure_port(bind)
    except RuntimeError:  # grpc's "Failed to bind": the port is taken or the address is not this host's
        port = 0
    if port == 0:
        raise OSError(f"cannot listen for peers on {bind} (--peer-port): the port is in use or the address "
                      "is not this host's")
    server.start()
    log.info("peer block service on %s (%d workers, %s)", bind, workers, "TLS" if tls else "plaintext")
    return server
