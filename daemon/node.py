"""Assemble and run a node daemon: cache, chain, tree, FUSE, control socket, metrics."""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import lmdb
import trio
from prometheus_client import start_http_server

from mxfs import __version__
from mxfs.block_peers.service import PeerCache
from mxfs.cache.blocks import BlockCache
from mxfs.cache.faults import CacheFaults
from mxfs.cache.memory import HotBlocks
from mxfs.config import MountConfig
from mxfs.errors import BlockUnavailable, ModelNotFound, MxfsError
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

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

HOT_BLOCKS_BYTES = 256 * 1024 * 1024
FLUSH_INTERVAL_S = 10.0
PRELOAD_RETRY_MAX_S = 30.0  # a --model the server cannot answer for yet is asked again this often at most
SERVER_CHECK_TIMEOUT_S = 5.0


def control_socket_path(cache_dir: Path) -> Path:
    """``<cache>/mxfsd.sock``, or a short path in the temp dir when that is too long for AF_UNIX."""
    path = cache_dir.resolve() / "mxfsd.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mxfsd-{digest}.sock"


def lock_cache_dir(cache_dir: Path) -> int:
    """Hold ``<cache>/mxfsd.lock`` (flock, released when the process exits, even by SIGKILL):
    one daemon per cache dir, or both would share its index, blobs and control socket."""
    path = cache_dir / "mxfsd.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise MxfsError(f"cannot use cache dir {cache_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise MxfsError(f"cache dir {cache_dir} is in use by another mxfs mount (pid {holder}); "
                        "each daemon needs its own --cache-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def default_cache_size(cache_dir: Path, held_bytes: int) -> int:
    """90% of what the cache may use on its disk: the free space plus what it already holds
    (so the bound does not shrink each time a daemon restarts over a warm cache)."""
    return int((shutil.disk_usage(cache_dir).free + held_bytes) * 0.9)


class NodeDaemon:
    def __init__(self, config: MountConfig) -> None:
        self.config = config
        self.mountpoint = Path(config.mountpoint).resolve()
        self.cache_dir = Path(config.cache_dir).resolve()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MxfsError(f"cannot create cache dir {self.cache_dir}: {exc.strerror}") from None
        self._lock_fd = lock_cache_dir(self.cache_dir)
        self.stats = FetchStats()
        self.faults = CacheFaults(self.stats.registry)
        limit = config.cache_size or functools.partial(default_cache_size, self.cache_dir)
        try:
            self.cache = BlockCache(self.cache_dir / "blocks", limit, index_bytes=config.cache_index_size,
                                    faults=self.faults)
        except OSError as exc:
            raise MxfsError(f"cannot use cache dir {self.cache_dir}: {exc.strerror or exc}") from None
        except lmdb.Error as exc:
            raise MxfsError(f"cannot open the cache index in {self.cache_dir / 'blocks'}: {exc}") from None
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
        self._early_signal: int | None = None  # SIGTERM/SIGINT before the mount was up
        self._failed = False

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

    async def _check_server(self) -> None:
        """Say at start whether the server answers; the mount serves either way."""
        try:
            health = await in_thread(self.client.health, SERVER_CHECK_TIMEOUT_S, abandon=True)
        except MxfsError as exc:
            log.warning("server %s does not answer (%s): the mount is up, and models resolve once the "
                        "server answers (files already cached, with a stored manifest, are served now)",
                        self.config.server, exc)
            return
        log.info("server %s answers (version %s, %s)", self.config.server, health.version, health.status)

    async def _preload_one(self, ref: ModelRef) -> None:
        """Resolve one ``--model``: asked again (backing off to every 30 s) while the server is
        unreachable; a model the server does not have is logged once (a lookup asks again)."""
        delay = 1.0
        while True:
            try:
                await self.ops.ensure_model(ref)
            except BlockUnavailable as exc:
                log.warning("model %s not ready: server %s unavailable (%s); asking again in %.0f s",
                            ref, self.config.server, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, PRELOAD_RETRY_MAX_S)
                continue
            except ModelNotFound as exc:
                log.error("model %s: %s (server %s); not mounted, a lookup of %s/%s asks again",
                          ref, exc, self.config.server, self.mountpoint, ref.name)
                return
            except MxfsError as exc:
                log.error("cannot resolve %s: %s", ref, exc)
                return
            log.info("model %s ready at %s/%s", ref, self.mountpoint, ref.name)
            return

    async def _preload(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._check_server)
            for text in self.config.models or []:
                nursery.start_soon(self._preload_one, parse_model_ref(text))  # names checked by the config

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
            if self._early_signal is not None:
                log.info("signal %d during start-up: not mounting %s", self._early_signal, self.mountpoint)
                return
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
                    # abandoned on cancel: its stat waits for this daemon's answer (the fd is closed below)
                    nursery.start_soon(functools.partial(in_thread, mountpoint.tune, self.mountpoint, abandon=True))
                    nursery.start_soon(self._preload)
                    if self.peers is not None:
                        self.peers.start(nursery, self.chain, self._mounted_manifest)
                    await self.session.run()  # returns once the filesystem is unmounted
                    nursery.cancel_scope.cancel()
            except BaseException:
                self._failed = True
                raise
            finally:
                with trio.CancelScope(shield=True):
                    ctl.stop(0)
                    self.socket.unlink(missing_ok=True)
                    if self.peers is not None:
                        await trio.to_thread.run_sync(self.peers.stop)
                    if not self._unmounting and self._mount_listed():  # the session died first
                        self._unmounting = True
                        log.error("%s with %s still mounted: detaching it", "stopping on an error" if self._failed
                                  else "fuse session ended", self.mountpoint)
                        await in_thread(kernel_mount.unmount, self.mountpoint, True)
                    os.close(fd)  # aborts the connection: nothing waits on this daemon any more

    def _start_metrics(self) -> None:
        host, port = self.config.metrics_host, self.config.metrics_port
        try:
            start_http_server(port, addr=host, registry=self.stats.registry)
        except OSError as exc:
            raise MxfsError(f"cannot serve metrics on {host}:{port} (--metrics-port): {exc.strerror or exc}") from None

    def _prepare_mountpoint(self) -> None:
        try:
            mountpoint.recover_stale(self.mountpoint)
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            with os.scandir(self.mountpoint) as entries:
                hidden = next(entries, None)
        except OSError as exc:
            raise MxfsError(f"cannot use mountpoint {self.mountpoint}: {exc.strerror or exc}") from None
        if hidden is not None:
            log.warning("mountpoint %s is not empty (%s, ...): its files are hidden while mounted, and "
                        "back after the unmount", self.mountpoint, hidden.name)

    def _on_early_signal(self, signum: int, frame) -> None:
        """Before the trio run takes signals over: remember it (the daemon then does not mount);
        during shutdown: ignored, so that a second signal does not kill the daemon mid-unmount."""
        if self.session is None:
            self._early_signal = signum

    def run(self) -> int:
        # until the receiver in ``main`` handles them, signals are remembered, never lost nor fatal
        previous = {s: signal.signal(s, self._on_early_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._prepare_mountpoint()
            if self.config.metrics_port:
                self._start_metrics()
            trio.run(self.main)
        except BaseExceptionGroup as group:  # a task failed: say what failed, in one line
            raise _first_error(group) from None
        finally:
            self.cache.close()
            self.client.close()
            os.close(self._lock_fd)
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.session is not None:
                log.info("unmounted %s", self.mountpoint)
        return 0


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first leaf of an exception group (the error a task raised, not its wrapping)."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf
