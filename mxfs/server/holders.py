"""Block-holder registry: which node daemons hold which blocks, and who cold-reads what.

Records, all on the server's ``Store`` (sqlite by default, Redis for several replicas):

* ``holders:live`` sorted set: node id -> wall-clock time its heartbeat expires. Liveness of
  the few nodes in one answer is one ``ZMSCORE``; the live list is one ``ZRANGEBYSCORE``;
  nothing scans every key (``SCAN`` over a shared Redis grows with everything in it).
* ``holders:addr`` hash: node id -> peer address.
* ``holders:file:<sha>:<bs>`` hash: node id -> compressed bitmap of the blocks it holds.
  Each announce rewrites only the fields of files that changed (a few bytes each).
* ``holders:nodefiles:<id>`` / ``holders:nodeswarms:<id>`` hashes: what to clean up when the
  node leaves. ``holders:swarm:<model@rev>`` hash: nodes cold-reading a model right now.

A node that withdraws (clean shutdown) is removed at once. A node whose heartbeat stops
vanishes from every answer at its expiry, and its records are reaped ``REAP_GRACE_S`` later
(the reaper runs at most once per TTL/3, from announces). A node that comes back after its
heartbeat lapsed re-announces everything it holds (``Announcer``), so a reap never hides blocks
for longer than that.
"""

from __future__ import annotations

import logging
import math
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
#: full gRPC name of the registry service (reported by grpc.health.v1 when it is on)
SERVICE_NAME = peer_pb2.DESCRIPTOR.services_by_name["BlockHolders"].full_name

FILE_TTL_S = 24 * 3600.0
LIVE_CACHE_S = 0.5
REAP_GRACE_S = 60.0
MAX_FILES_PER_ANNOUNCE = 4096
MAX_SWARMS_PER_ANNOUNCE = 64
LIVE = "holders:live"
ADDR = "holders:addr"

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

    def __init__(self, store: Store, ttl_s: float, reap_grace_s: float = REAP_GRACE_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.reap_grace_s = reap_grace_s
        self._live: dict[str, str] = {}
        self._live_at = 0.0
        self._generation = 0
        self._reaped_at = 0.0
        self._lock = threading.Lock()

    # -- liveness -------------------------------------------------------------------------

    def live_nodes(self) -> dict[str, str]:
        """node id -> address of every node whose heartbeat has not expired (cached briefly)."""
        with self._lock:
            if time.monotonic() - self._live_at < LIVE_CACHE_S:
                return self._live
            generation = self._generation
        ids = self.store.zrange_by_score(LIVE, time.time(), math.inf)
        live = {n: a.decode() for n, a in zip(ids, self.store.hmget(ADDR, ids), strict=True) if a is not None}
        with self._lock:
            if generation == self._generation:  # no join/withdraw raced with the read
                self._live, self._live_at = live, time.monotonic()
        return live

    def live_count(self) -> int:
        return self.store.zcount(LIVE, time.time(), math.inf)

    def _alive(self, ids: list[str]) -> dict[str, str]:
        """node id -> address for those of ``ids`` whose heartbeat has not expired."""
        now = time.time()
        alive = [n for n, exp in zip(ids, self.store.zscores(LIVE, ids), strict=True) if exp is not None and exp > now]
        return {n: a.decode() for n, a in zip(alive, self.store.hmget(ADDR, alive), strict=True) if a is not None}

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
        st, ttl, now = self.store, self.ttl_s, time.time()
        (expires,) = st.zscores(LIVE, [node_id])
        is_new = expires is None or expires <= now
        st.zadd(LIVE, {node_id: now + ttl})
        if is_new or st.hget(ADDR, node_id) != address.encode():
            st.hset(ADDR, {node_id: address.encode()})
        for sha, bs, bitmap in files:
            key = _file_key(sha, bs)
            if len(bitmap) > MAX_BITMAP_BYTES:
                raise ValueError("bitmap too large")
            if bitmap:
                st.hset(f"holders:file:{key}", {node_id: bitmap}, FILE_TTL_S)
                st.hset(f"holders:nodefiles:{node_id}", {key: b"1"}, FILE_TTL_S)
            else:
                st.hdel(f"holders:file:{key}", node_id)
                st.hdel(f"holders:nodefiles:{node_id}", key)
        for swarm in swarms:
            _check(_SWARM, swarm, "swarm")
            st.hset(f"holders:swarm:{swarm}", {node_id: b"1"}, ttl)
            st.hset(f"holders:nodeswarms:{node_id}", {swarm: b"1"}, FILE_TTL_S)
        for swarm in left_swarms:
            _check(_SWARM, swarm, "swarm")
            st.hdel(f"holders:swarm:{swarm}", node_id)
            st.hdel(f"holders:nodeswarms:{node_id}", swarm)
        st.expire(f"holders:nodefiles:{node_id}", FILE_TTL_S)
        st.expire(f"holders:nodeswarms:{node_id}", FILE_TTL_S)
        if is_new:
            self._invalidate()
            log.info("peer node %s joined at %s", node_id, address)
        self.reap(now)

    def _forget(self, node_id: str) -> None:
        st = self.store
        for key in st.hgetall(f"holders:nodefiles:{node_id}"):
            st.hdel(f"holders:file:{key}", node_id)
        for swarm in st.hgetall(f"holders:nodeswarms:{node_id}"):
            st.hdel(f"holders:swarm:{swarm}", node_id)
        st.delete(f"holders:nodefiles:{node_id}")
        st.delete(f"holders:nodeswarms:{node_id}")
        st.zrem(LIVE, node_id)
        st.hdel(ADDR, node_id)

    def reap(self, now: float | None = None, force: bool = False) -> None:
        """Forget nodes whose heartbeat expired over ``reap_grace_s`` ago (at most once per TTL/3)."""
        now = time.time() if now is None else now
        with self._lock:
            if not force and time.monotonic() - self._reaped_at < self.ttl_s / 3:
                return
            self._reaped_at = time.monotonic()
        for node_id in self.store.zrange_by_score(LIVE, -math.inf, now - self.reap_grace_s):
            self._forget(node_id)
            log.info("peer node %s reaped (no heartbeat for %gs)", node_id, self.ttl_s + self.reap_grace_s)

    def withdraw(self, node_id: str) -> None:
        """Forget a node now (clean shutdown)."""
        _check(_NODE_ID, node_id, "node id")
        self._forget(node_id)
        self._invalidate()
        log.info("peer node %s withdrew", node_id)

    # -- reads ----------------------------------------------------------------------------

    def holders(self, sha256: str, block_size: int) -> list[tuple[str, str, bytes]]:
        """(node id, address, bitmap) of live holders; only the file's holders are checked for liveness."""
        fields = self.store.hgetall(f"holders:file:{_file_key(sha256, block_size)}")
        alive = self._alive(sorted(fields))
        return [(n, alive[n], fields[n]) for n in sorted(alive)]

    def swarm(self, swarm: str) -> list[tuple[str, str]]:
        """(node id, address) of live members of ``swarm``, sorted by id."""
        _check(_SWARM, swarm, "swarm")
        alive = self._alive(sorted(self.store.hgetall(f"holders:swarm:{swarm}")))
        return sorted(alive.items())


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
        self.nodes_gauge.set(self.registry.live_count())
        return peer_pb2.AnnounceReply(ttl_s=self.registry.ttl_s)

    @token_required
    @rpc("Withdraw")
    def Withdraw(self, request: peer_pb2.WithdrawRequest, context: grpc.ServicerContext) -> peer_pb2.WithdrawReply:
        self.registry.withdraw(request.node_id)
        self.nodes_gauge.set(self.registry.live_count())
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
    ctx.services.append(SERVICE_NAME)
    log.info("block-holder registry on (%s, node TTL %gs)", type(store).__name__, registry.ttl_s)
