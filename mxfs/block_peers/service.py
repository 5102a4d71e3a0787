"""The peer cache of one daemon, assembled: identity, tier, announcer, block service."""

from __future__ import annotations

import logging
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import trio

from mxfs.block_peers.client import PeerClients, PullThrough
from mxfs.block_peers.fill import SwarmFill
from mxfs.block_peers.holdings import Announcer, Holdings
from mxfs.block_peers.registry import HolderRegistryClient, PeerNode
from mxfs.block_peers.server import PeerBlockServicer, serve
from mxfs.block_peers.view import HolderView
from mxfs.cache.blocks import BlockCache
from mxfs.config import MountConfig
from mxfs.errors import BlockUnavailable, ModelNotFound
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.peers import PeerTier
from mxfs.fetch.stats import FetchStats
from mxfs.manifest.model import BlockKey, Manifest
from mxfs.rpc.channel import default_security

log = logging.getLogger(__name__)

PULL_CONCURRENCY = 8
REGISTRY_TIMEOUT_S = 5.0

#: ``(name, revision) -> Manifest | None``: models this node has mounted
KnownModels = Callable[[str, str], "Manifest | None"]


def node_id(cache_dir: Path) -> str:
    """A stable id for this node's cache (kept in ``<cache>/peer-node-id``)."""
    path = cache_dir / "peer-node-id"
    try:
        text = path.read_text().strip()
        if re.fullmatch(r"[A-Za-z0-9._-]{1,128}", text):
            return text
    except OSError:
        pass
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:60] or "node"
    text = f"{host}-{uuid.uuid4().hex[:8]}"
    path.write_text(text + "\n")
    return text


def advertise_address(config: MountConfig) -> str:
    """host:port other nodes dial: --peer-advertise / MX_WORKER_HOST, else the listen host, else our IP."""
    host = config.peer_advertise or (config.peer_host if config.peer_host not in ("", "0.0.0.0", "::") else "")
    if not host:
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"[{host}]:{config.peer_port}" if ":" in host else f"{host}:{config.peer_port}"


class PeerCache:
    """Owns the peer side of a daemon; ``tier`` goes into the fetch chain before the server."""

    def __init__(self, config: MountConfig, cache_dir: Path, cache: BlockCache, stats: FetchStats) -> None:
        self.config = config
        self.cache = cache
        self.stats = stats
        self.node = PeerNode(node_id(cache_dir), advertise_address(config))
        self.holdings = Holdings()
        self.holdings.changed(cache.keys(), [])  # what survived a restart is announced too
        cache.listeners.append(self.holdings.changed)
        self.registry = HolderRegistryClient(config.server, config.peer_token,
                                             timeout_s=min(config.fetch_timeout, REGISTRY_TIMEOUT_S))
        peer_tls = None
        if config.tls_cert_file:  # this node serves TLS, so do its peers: verify them with the cluster CA
            peer_tls = replace(default_security(), server_name=config.tls_peer_name)
        self.clients = PeerClients(config.peer_token, self.node.node_id, peer_tls)
        self.fetch_limiter = trio.CapacityLimiter(config.fetch_workers)
        self.registry_limiter = trio.CapacityLimiter(4)
        self.announcer = Announcer(self.registry, self.node, self.holdings, self.registry_limiter)
        self.view = HolderView(self.registry, self.registry_limiter)
        self.fill = SwarmFill(self.node) if config.peer_swarm and config.peer_fill else None
        self.tier = PeerTier(self.node, self.clients, self.view, self.announcer, self.fetch_limiter, stats,
                             timeout_s=config.fetch_timeout, hedge_min_s=config.peer_hedge,
                             swarm=config.peer_swarm, fill=self.fill)
        self._pull_limiter = trio.CapacityLimiter(PULL_CONCURRENCY)
        self._server: grpc.Server | None = None

    def start(self, nursery: trio.Nursery, chain: FetchChain, known: KnownModels) -> None:
        """Serve blocks to peers and start announcing (call inside the daemon's trio run)."""
        token = trio.lowlevel.current_trio_token()

        async def pull_async(key: BlockKey, length: int, where: PullThrough) -> bytes | bytearray:
            manifest = known(where.name, where.revision)
            if manifest is None:
                raise ModelNotFound(f"{where.name}@{where.revision} is not mounted here")
            entry = manifest.file(where.path)
            if entry.sha256 != key.sha256 or manifest.block_size != key.block_size:
                raise ValueError(f"{key} is not a block of {where.name}/{where.path}")
            if entry.block_span(key.index, key.block_size)[1] != length:
                raise ValueError(f"wrong length for {key}")
            async with self._pull_limiter:
                return await chain.block(manifest, entry, key.index, via_peers=False)

        def pull(key: BlockKey, length: int, where: PullThrough) -> bytes | bytearray:
            try:
                return trio.from_thread.run(pull_async, key, length, where, trio_token=token)
            except (trio.RunFinishedError, trio.Cancelled) as exc:
                raise BlockUnavailable("daemon is shutting down") from exc
            except IndexError as exc:
                raise ValueError(str(exc)) from exc

        servicer = PeerBlockServicer(self.cache, self.config.peer_token, pull, self.stats.registry)
        tls = (self.config.tls_cert_file, self.config.tls_key_file) if self.config.tls_cert_file else None
        self._server = serve(self.config.peer_host, self.config.peer_port, servicer, self.config.peer_workers, tls)
        nursery.start_soon(self.announcer.run)
        if self.fill is not None:
            self.fill.start(nursery, chain.block, chain.is_cached, self.tier.peer_count, self.tier.swarm_members)
        log.info("peer cache on: node %s at %s, %d cached files to announce", self.node.node_id,
                 self.node.address, self.holdings.files())

    def stop(self) -> None:
        """Stop serving, withdraw from the registry, close channels (blocking)."""
        if self._server is not None:
            self._server.stop(1.0).wait(5.0)
            self._server = None
            self.announcer.withdraw()
        self.registry.close()
        self.clients.close()

    def status_lines(self) -> list[str]:
        state = "connected" if self.announcer.connected else "registry unreachable"
        head = f"self {self.node.node_id} {self.node.address} ({state}, {self.holdings.files()} files held)"
        return [head, *self.tier.peer_lines()]
