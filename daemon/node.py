"""Assemble and run a node daemon: cache, chain, tree, FUSE, control socket, metrics."""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

import trio
from prometheus_client import start_http_server

from mxfs import __version__
from mxfs.block_peers.service import PeerCache
from mxfs.cache.blocks import BlockCache
from mxfs.cache.faults import CacheFaults
from mxfs.cache.memory import HotBlocks
from mxfs.config import MountConfig
from mxfs.errors import MxfsError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.hashes import BlockHashes
from mxfs.fetch.hydrate import Hydrator
from mxfs.fetch.origin import OriginTier
from mxfs.fetch.reader import BlockReader
from mxfs.fetch.resolver import ManifestResolver
from mxfs.fetch.server import ServerTier
from mxfs.fetch.stats import FetchStats
from mxfs.fetch.supervise import guarded
from mxfs.fetch.threads import in_thread
from mxfs.fuse.kernel import mount as kernel_mount
from mxfs.fuse.kernel.session import Session
from mxfs.fuse.ops import MxfsOperations
from mxfs.fuse.stats import FuseStats
from mxfs.fuse.tree import Tree
from mxfs.manifest.model import Manifest
from mxfs.manifest.names import ModelRef, parse_model_ref
from mxfs.misses import RecentMisses
from mxfs.rpc import node_pb2
from mxfs.rpc.channel import ChannelSecurity, set_default_security
from mxfs.rpc.client import MxfsClient
from mxfs_daemon import control, mountpoint
from mxfs_daemon.prefetch import Prefetcher, PrefetchJob

log = logging.getLogger(__name__)

HOT_BLOCKS_BYTES = 256 * 1024 * 1024
FLUSH_INTERVAL_S = 10.0


def control_socket_path(cache_dir: Path) -> Path:
    """``<cache>/mxfsd.sock``, or a short path in the temp dir when that is too long for AF_UNIX."""
    path = cache_dir.resolve() / "mxfsd.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mxfsd-{digest}.sock"


def default_cache_size(cache_dir: Path, held_bytes: int) -> int:
    """90% of what the cache may use on its disk: the free space plus what it already holds
    (so the bound does not shrink each time a daemon restarts over a warm cache)."""
    return int((shutil.disk_usage(cache_dir).free + held_bytes) * 0.9)


class NodeDaemon:
    def __init__(self, config: MountConfig) -> None:
        self.config = config
        self.mountpoint = Path(config.mountpoint).resolve()
        self.cache_dir = Path(config.cache_dir).resolve()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.stats = FetchStats()
        self.faults = CacheFaults(self.stats.registry)
        limit = config.cache_size or functools.partial(default_cache_size, self.cache_dir)
        self.cache = BlockCache(self.cache_dir / "blocks", limit, index_bytes=config.cache_index_size,
                                faults=self.faults)
        set_default_security(ChannelSecurity(config.auth_token, config.tls_ca_file))
        self.client = MxfsClient(config.server, timeout_s=config.fetch_timeout)
        self.rpc_limiter = trio.CapacityLimiter(config.fetch_workers)
        self.io_limiter = trio.CapacityLimiter(config.fetch_workers)
        self.peers = PeerCache(config, self.cache_dir, self.cache, self.stats) if config.peer_port else None
        self.tiers = [*([self.peers.tier] if self.peers else []),
                      *([OriginTier.from_uris(config.origin_direct, self.rpc_limiter)] if config.origin_direct else []),
                      ServerTier(self.client, self.rpc_limiter, config.fetch_timeout)]
        self.hashes = BlockHashes(self.client, self.cache_dir, self.rpc_limiter)
        self.chain = FetchChain(self.cache, self.tiers, self.stats, HotBlocks(HOT_BLOCKS_BYTES),
                                self.io_limiter, config.fetch_timeout, hashes=self.hashes)
        self.resolver = ManifestResolver(self.client, self.cache_dir, self.rpc_limiter, faults=self.faults,
                                         misses=RecentMisses(config.negative_ttl))
        self.reader = BlockReader(self.chain, config.readahead_blocks)
        self.reader.hydrator = Hydrator(self.chain, limiter=self.reader.background)
        self.prefetcher = Prefetcher(self.chain, self.reader.background)
        self.tree = Tree()
        self.socket = control_socket_path(self.cache_dir)
        self.ops = MxfsOperations(
            self.tree, self.resolver, self.reader, self.cache,
            root_xattrs={"control": str(self.socket), "version": __version__, "server": config.server},
            stats=FuseStats(self.stats.registry),
        )
        self.prefetcher.store = self.ops.store_page_cache
        self.session: Session | None = None
        self._unmounting = False
        self.jobs: dict[ModelRef, PrefetchJob] = {}
        self._nursery: trio.Nursery | None = None

    # -- control handlers (run in the trio loop) ----------------------------------------------

    async def start_prefetch(self, ref: ModelRef, page_cache: bool) -> PrefetchJob:
        job = self.jobs.get(ref)
        if job is not None and not job.finished:
            return job
        await self.ops.ensure_model(ref)
        manifest = await self.resolver.resolve(ref)
        job = self.jobs[ref] = PrefetchJob(ref.name)
        inode_of = self.tree.file_inodes(manifest) if page_cache else None
        assert self._nursery is not None
        self._nursery.start_soon(guarded, self.stats, "prefetch", self.prefetcher.run, job, manifest, inode_of)
        return job

    async def resolve(self, ref: ModelRef) -> str:
        """Show ``ref`` in the tree (its snapshot, and its ref when a branch or tag); the commit."""
        manifest = await self.resolver.resolve(ref)
        self.tree.add_model(ref, manifest)
        return manifest.revision

    async def status(self) -> node_pb2.NodeStatus:
        snap = self.stats.snapshot()
        reply = node_pb2.NodeStatus(
            mountpoint=str(self.mountpoint), server=self.config.server,
            cache_bytes=self.cache.used, cache_limit=self.cache.limit,
            bytes_by_tier=snap["bytes"], peers=self.peers.status_lines() if self.peers else [],
        )
        for manifest in self.tree.manifests():
            cached = sum(self.cache.cached_bytes(e, manifest.block_size) for e in manifest.files)
            complete = sum(1 for e in manifest.files if not e.size or self.cache.is_complete(e, manifest.block_size))
            reply.models.add(name=manifest.name, revision=manifest.revision,
                             total_bytes=manifest.total_size, cached_bytes=cached,
                             files=len(manifest.files), complete_files=complete)
        return reply

    def _mounted_manifest(self, name: str, revision: str) -> Manifest | None:
        """A manifest this node has mounted (peers may ask it to pull-through only those)."""
        return next((m for m in self.tree.manifests() if m.name == name and m.revision == revision), None)

    # -- lifecycle ------------------------------------------------------------------------------

    async def _preload(self) -> None:
        for text in self.config.models or []:
            ref = parse_model_ref(text)
            try:
                await self.ops.ensure_model(ref)
                log.info("model %s ready at %s/%s", ref, self.mountpoint, ref.name)
            except MxfsError as exc:  # the daemon still serves other models; lookups retry it
                log.error("cannot resolve %s: %s", ref, exc)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL_S)
            await guarded(self.stats, "housekeeping", in_thread, self.cache.flush_usage)
            self.stats.cache_used.set(self.cache.used)

    async def _signals(self, signals, stop: trio.CancelScope) -> None:
        """The first SIGINT/SIGTERM unmounts; later ones only say that it is under way."""
        async for signum in signals:
            if self._unmounting:
                log.info("signal %d: already unmounting %s", signum, self.mountpoint)
                continue
            log.info("signal %d: unmounting %s", signum, self.mountpoint)
            self._unmounting = True
            await self._unmount()
            stop.cancel()

    def _mount_listed(self) -> bool:
        """From the mount table only: a stat of the mountpoint would wait for this very daemon."""
        return any(mp == str(self.mountpoint) for mp, _, _ in mountpoint.mounts())

    async def _unmount(self) -> None:
        """Unmount while the session still answers (the kernel may ask it to DESTROY)."""
        try:
            await in_thread(kernel_mount.unmount, self.mountpoint)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.error("cannot unmount %s: %s", self.mountpoint, exc)
            log.warning("%s is busy: detaching it; open files fail from now on", self.mountpoint)
            try:
                await in_thread(kernel_mount.unmount, self.mountpoint, True)
            except OSError as exc2:
                log.error("cannot detach %s: %s", self.mountpoint, exc2)

    async def main(self) -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            fd = kernel_mount.mount(self.mountpoint, allow_other=self.config.allow_other)
            self.session = Session(self.ops, fd, passthrough=self.config.passthrough, io_limiter=self.io_limiter)
            log.info("mounted %s (server %s, cache %s, %d bytes max)", self.mountpoint,
                     self.config.server, self.cache_dir, self.cache.limit)
            ctl = control.serve(self.socket, control.NodeControlServicer(token, self.start_prefetch, self.status,
                                                                         self.resolve))
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.reader.start(nursery)
                    self.chain.start(nursery)
                    nursery.start_soon(self._signals, signals, nursery.cancel_scope)
                    nursery.start_soon(self._housekeeping)
                    nursery.start_soon(in_thread, mountpoint.tune, self.mountpoint)
                    nursery.start_soon(self._preload)
                    if self.peers is not None:
                        self.peers.start(nursery, self.chain, self._mounted_manifest)
                    await self.session.run()  # returns once the filesystem is unmounted
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    ctl.stop(0)
                    self.socket.unlink(missing_ok=True)
                    if self.peers is not None:
                        await trio.to_thread.run_sync(self.peers.stop)
                    if not self._unmounting and self._mount_listed():  # the session died first
                        self._unmounting = True
                        log.error("fuse session ended with %s still mounted: detaching it", self.mountpoint)
                        await in_thread(kernel_mount.unmount, self.mountpoint, True)
                    os.close(fd)  # aborts the connection: nothing waits on this daemon any more

    def run(self) -> int:
        mountpoint.recover_stale(self.mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if self.config.metrics_port:
            start_http_server(self.config.metrics_port, addr=self.config.metrics_host, registry=self.stats.registry)
        # outside the trio run (start-up, shutdown) signals wait: the receiver handles them
        # while the mount exists, and a second one must not kill the daemon mid-unmount
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            trio.run(self.main)
        finally:
            self.cache.close()
            self.client.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            log.info("unmounted %s", self.mountpoint)
        return 0
