"""Background hydration of whole models with read priority and progress reporting.

Without ``page_cache`` a job runs the hydration engine (``mxfs.fetch.hydrate``): blocks
land in place in preallocated blobs and every file ends recorded complete. With
``page_cache`` blocks also go through the chain into the kernel page cache
(``notify_store``), as before."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from mxfs.errors import MxfsError
from mxfs.fetch.chain import FetchChain
from mxfs.fetch.hydrate import Hydrator, Progress
from mxfs.manifest.model import Manifest

log = logging.getLogger(__name__)


@dataclass
class PrefetchJob:
    """Progress of one hydration; read from other threads under ``lock``."""

    name: str
    revision: str = ""
    total_bytes: int = 0
    total_blocks: int = 0
    done_bytes: int = 0
    done_blocks: int = 0
    finished: bool = False
    error: str = ""
    #: every file of the model is complete and verified in the node cache
    complete: bool = False
    progress: Progress | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict:
        if self.progress is not None:
            with self.progress.lock, self.lock:
                self.done_bytes, self.done_blocks = self.progress.done_bytes, self.progress.done_blocks
        with self.lock:
            return {k: getattr(self, k) for k in (
                "revision", "total_bytes", "total_blocks", "done_bytes", "done_blocks", "finished", "error",
                "complete")}


class Prefetcher:
    """Fetches every block of a manifest through the chain (already cached ones are skipped)."""

    def __init__(self, chain: FetchChain, limiter: trio.CapacityLimiter, concurrency: int = 8) -> None:
        self.chain = chain
        self.limiter = limiter
        self.concurrency = concurrency
        self.hydrator = Hydrator(chain, concurrency)
        #: ``await store(inode, offset, data)`` puts bytes into the kernel page cache (set by the daemon)
        self.store: Callable[[int, int, bytes | bytearray], Awaitable[None]] | None = None

    async def run(self, job: PrefetchJob, manifest: Manifest, inode_of: dict[str, int] | None) -> None:
        """Hydrate ``manifest``; with ``inode_of`` (path -> inode) also fill the page cache."""
        with job.lock:
            job.revision = manifest.revision
            job.total_bytes = manifest.total_size
            job.total_blocks = manifest.total_blocks
        if inode_of is None:
            await self._hydrate(job, manifest)
            return
        work = [(e, i) for e in manifest.files for i in range(e.block_count(manifest.block_size))]
        send, receive = trio.open_memory_channel(0)
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._worker, job, manifest, receive.clone(), inode_of)
                async with send:
                    for item in work:
                        await send.send(item)
                await receive.aclose()
            await self.chain.drain()  # "finished" means every block is on disk
        except MxfsError as exc:
            job.error = str(exc)
            log.warning("prefetch of %s failed: %s", job.name, exc)
        finally:
            with job.lock:
                job.complete = not job.error and all(
                    self.chain.cache.is_complete(e, manifest.block_size) or not e.size for e in manifest.files)
                job.finished = True
        log.info("prefetch of %s@%s: %d/%d blocks", job.name, job.revision, job.done_blocks, job.total_blocks)

    async def _hydrate(self, job: PrefetchJob, manifest: Manifest) -> None:
        job.progress = Progress()
        failed = ["hydration stopped unexpectedly (see the daemon log)"]
        try:
            failed = await self.hydrator.hydrate(manifest, job.progress)
        except MxfsError as exc:
            failed = [str(exc)]
        finally:  # whatever happened, waiters learn the job is over (an unexpected error is logged by guarded)
            with job.lock:
                job.error = f"{len(failed)} file(s) not hydrated; first: {failed[0]}" if failed else ""
                job.complete = not failed
            job.snapshot()
            with job.lock:
                job.finished = True
        start = job.progress.started
        secs = time.monotonic() - start
        log.info("hydrated %s@%s: %d/%d bytes in %.1fs (%.0f MB/s)%s", job.name, job.revision, job.done_bytes,
                 job.total_bytes, secs, job.done_bytes / max(secs, 1e-6) / 1e6, f"; {job.error}" if failed else "")

    async def _worker(self, job, manifest: Manifest, receive, inode_of) -> None:
        async with receive:
            async for entry, index in receive:
                offset, length = entry.block_span(index, manifest.block_size)
                if inode_of is None and self.chain.is_cached(manifest, entry, index):
                    data = None
                else:
                    async with self.limiter:
                        data = await self.chain.block(manifest, entry, index)
                if data is not None and inode_of is not None and entry.path in inode_of and self.store:
                    try:
                        await self.store(inode_of[entry.path], offset, data)
                    except OSError as exc:  # the kernel doesn't know the inode yet: fine
                        log.debug("notify_store %s: %s", entry.path, exc)
                with job.lock:
                    job.done_blocks += 1
                    job.done_bytes += length
