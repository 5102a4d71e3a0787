"""Block-holder registry: which node daemons hold which blocks, and who cold-reads what.

Records, all on the server's ``Store`` (sqlite by default, Redis for several replicas):

* ``holders:node:<id>`` -> peer address, TTL: a node is alive while this key lives.
* ``holders:file:<sha>:<bs>`` hash: node id -> compressed bitmap of the blocks it holds.
  Each announce rewrites only the fields of files that changed (a few bytes each).
* ``holders:nodefiles:<id>`` / ``holders:nodeswarms:<id>`` hashes: what to clean up on
  withdraw. ``holders:swarm:<model@rev>`` hash: nodes cold-reading a model right now.

Dead nodes (no heartbeat within the TTL) vanish from every answer at once and their
fields are deleted lazily the next time a file is looked up.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING

import grpc
from prometheus_client import Counter, Gauge

from mxfs.block_peers.auth import token_required
from mxfs.block_peers.bitmap import MAX_BITMAP_BYTES
from mxfs.registry.store import Store, open_store
from mxfs.rpc import peer_pb2, peer_pb2_grpc
from mxfs.server.errors import rpc
from mxfs.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from mxfs.server.app import ServerContext

log = logging.getLogger(__name__)

FILE_TTL_S = 24 * 3600.0
LIVE_CACHE_S = 0.5
MAX_FILES_PER_ANNOUNCE = 4096
MAX_SWARMS_PER_ANNOUNCE = 64

_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-_:\[\]]{3,255}$")
_SWARM = re.compile(r"^[A-Za-z0-9._/@-]{3,300}$")


def _check(pattern: re.Pattern, value: str, what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"invalid {what}: {value[:80]!r}")
    return value


def _file_key(sha256: str, block_size: int) -> str:
    _check(_SHA, sha256, "sha256")
    if block_size <= 0 or block_size & (block_size - 1) or block_size > 1 << 30:
        raise ValueError(f"invalid block size {block_size}")
    return f"{sha256}:{block_size}"


class HolderRegistry:
    """The registry's logic on a ``Store``; thread-safe (the store is)."""

    def __init__(self, store: Store, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._live: dict[str, str] = {}
        self._live_at = 0.0
        self._generation = 0
        self._lock = threading.Lock()

    # -- liveness -------------------------------------------------------------------------

    def live_nodes(self) -> dict[str, str]:
        """node id -> address of every node whose heartbeat has not expired (cached briefly)."""
        with self._lock:
            if time.monotonic() - self._live_at < LIVE_CACHE_S:
                return self._live
            generation = self._generation
        live = {k.removeprefix("holders:node:"): v.decode() for k, v in self.store.scan("holders:node:")}
        with self._lock:
            if generation == self._generation:  # no join/withdraw raced with the scan
                self._live, self._live_at = live, time.monotonic()
        return live

    def _invalidate(self) -> None:
        with self._lock:
            self._live_at = 0.0
            self._generation += 1

    # -- writes ---------------------------------------------------------------------------

    def announce(self, node_id: str, address: str, files: list[tuple[str, int, bytes]],
                 swarms: list[str], left_swarms: list[str]) -> None:
        """Refresh the node's heartbeat and record the changed files and swarms."""
        _check(_NODE_ID, node_id, "node id")
        _check(_ADDRESS, address, "address")
        if len(files) > MAX_FILES_PER_ANNOUNCE or len(swarms) + len(left_swarms) > MAX_SWARMS_PER_ANNOUNCE:
            raise ValueError("announce too large: send it in batches")
        st, ttl = self.store, self.ttl_s
        is_new = st.get(f"holders:node:{node_id}") is None
        st.put(f"holders:node:{node_id}", address.encode(), ttl)
        for sha, bs, bitmap in files:
            key = _file_key(sha, bs)
            if len(bitmap) > MAX_BITMAP_BYTES:
                raise ValueError("bitmap too large")
            if bitmap:
                st.hset(f"holders:file:{key}", {node_id: bitmap}, FILE_TTL_S)
                st.hset(f"holders:nodefiles:{node_id}", {key: b"1"}, ttl)
            else:
                st.hdel(f"holders:file:{key}", node_id)
                st.hdel(f"holders:nodefiles:{node_id}", key)
        for swarm in swarms:
            _check(_SWARM, swarm, "swarm")
            st.hset(f"holders:swarm:{swarm}", {node_id: b"1"}, ttl)
            st.hset(f"holders:nodeswarms:{node_id}", {swarm: b"1"}, ttl)
        for swarm in left_swarms:
            _check(_SWARM, swarm, "swarm")
            st.hdel(f"holders:swarm:{swarm}", node_id)
            st.hdel(f"holders:nodeswarms:{node_id}", swarm)
        st.expire(f"holders:nodefiles:{node_id}", ttl)
        st.expire(f"holders:nodeswarms:{node_id}", ttl)
        if is_new:
            self._invalidate()
            log.info("peer node %s joined at %s", node_id, address)

    def withdraw(self, node_id: str) -> None:
        """Forget a node now (clean shutdown)."""
        _check(_NODE_ID, node_id, "node id")
        st = self.store
        for key in st.hgetall(f"holders:nodefiles:{node_id}"):
            st.hdel(f"holders:file:{key}", node_id)
        for swarm in st.hgetall(f"holders:nodeswarms:{node_id}"):
            st.hdel(f"holders:swarm:{swarm}", node_id)
        for key in ("node", "nodefiles", "nodeswarms"):
            st.delete(f"holders:{key}:{node_id}")
        self._invalidate()
        log.info("peer node %s withdrew", node_id)

    # -- reads ----------------------------------------------------------------------------

    def holders(self, sha256: str, block_size: int) -> list[tuple[str, str, bytes]]:
        """(node id, address, bitmap) of live holders.

        Fields of dead nodes are only filtered here, never deleted: a read with a slightly stale
        view of the live nodes must not delete what a (re)joining node has just announced.
        A clean shutdown deletes its fields (``withdraw``); a crashed node's small bitmaps go
        with the file's hash once nobody announces that file for ``FILE_TTL_S``.
        """
        key = f"holders:file:{_file_key(sha256, block_size)}"
        fields = self.store.hgetall(key)
        live = self.live_nodes()
        return sorted((n, live[n], bm) for n, bm in fields.items() if n in live)

    def swarm(self, swarm: str) -> list[tuple[str, str]]:
        """(node id, address) of live members of ``swarm``, sorted by id."""
        _check(_SWARM, swarm, "swarm")
        live = self.live_nodes()
        return sorted((n, live[n]) for n in self.store.hgetall(f"holders:swarm:{swarm}") if n in live)


class BlockHoldersServicer(peer_pb2_grpc.BlockHoldersServicer):
    """gRPC face of the registry; every call needs the cluster token."""

    def __init__(self, registry: HolderRegistry, metrics: ServerMetrics, token: str) -> None:
        self.registry = registry
        self.metrics = metrics
        self.token = token
        r = metrics.registry
        self.nodes_gauge = Gauge("mxfs_server_peer_nodes", "live peer nodes in the holder registry", registry=r)
        self.announced = Counter("mxfs_server_holder_files_announced", "file holdings announced", registry=r)

    @token_required
    @rpc("Announce")
    def Announce(self, request: peer_pb2.AnnounceRequest, context: grpc.ServicerContext) -> peer_pb2.AnnounceReply:
        files = [(f.sha256, f.block_size, f.bitmap) for f in request.files]
        self.registry.announce(request.node.node_id, request.node.address, files,
                               list(request.swarms), list(request.left_swarms))
        self.announced.inc(len(files))
        self.nodes_gauge.set(len(self.registry.live_nodes()))
        return peer_pb2.AnnounceReply(ttl_s=self.registry.ttl_s)

    @token_required
    @rpc("Withdraw")
    def Withdraw(self, request: peer_pb2.WithdrawRequest, context: grpc.ServicerContext) -> peer_pb2.WithdrawReply:
        self.registry.withdraw(request.node_id)
        self.nodes_gauge.set(len(self.registry.live_nodes()))
        return peer_pb2.WithdrawReply()

    @token_required
    @rpc("Holders")
    def Holders(self, request: peer_pb2.HoldersRequest, context: grpc.ServicerContext) -> peer_pb2.HoldersReply:
        reply = peer_pb2.HoldersReply()
        for node_id, address, bitmap in self.registry.holders(request.sha256, request.block_size):
            reply.holders.add(node=peer_pb2.PeerNode(node_id=node_id, address=address), bitmap=bitmap)
        if request.swarm:
            for node_id, address in self.registry.swarm(request.swarm):
                reply.swarm.add(node_id=node_id, address=address)
        return reply

    @token_required
    @rpc("ListNodes")
    def ListNodes(self, request: peer_pb2.ListNodesRequest, context: grpc.ServicerContext) -> peer_pb2.ListNodesReply:
        reply = peer_pb2.ListNodesReply()
        for node_id, address in sorted(self.registry.live_nodes().items()):
            reply.nodes.add(node_id=node_id, address=address)
        return reply


def register(ctx: ServerContext) -> None:
    """Server plugin: serve the registry when a cluster token is configured."""
    if not ctx.config.peer_token:
        log.info("no peer token configured: block-holder registry off (peer cache disabled)")
        return
    store = open_store(ctx.state_dir, ctx.config.metadata_backend or None, ctx.config.redis_url or None)
    ctx.on_stop.append(store.close)
    registry = HolderRegistry(store, ctx.config.holder_ttl)
    peer_pb2_grpc.add_BlockHoldersServicer_to_server(
        BlockHoldersServicer(registry, ctx.metrics, ctx.config.peer_token), ctx.grpc_server
    )
    log.info("block-holder registry on (%s, node TTL %gs)", type(store).__name__, registry.ttl_s)
