"""The fetch chain: memory -> local cache -> remote tiers, each block verified by its hash.

Concurrent requests for one block share a single fetch. A tier that returns bytes that
fail the hash is skipped (and told, so it can quarantine itself); a failing cache write
never fails a read. A tier with ``hedge_after()`` that has not answered by then gets
the next tier started beside it (first verified answer wins, the other is cancelled);
a tier with ``verifies = True`` checks block hashes itself (the peer tier, which must
know which peer lied). Tiers with ``is_peer = True`` are skipped for ``via_peers=False``
(a block fetched on behalf of another peer never goes back out to peers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks
from mxfs.errors import BlockUnavailable, InvalidModelName, MxfsError, SourceError
from mxfs.fetch.base import Tier
from mxfs.fetch.hashes import BlockHashes
from mxfs.fetch.stats import FetchStats
from mxfs.fetch.supervise import guarded
from mxfs.fetch.threads import in_thread
from mxfs.manifest.hashing import block_ok
from mxfs.manifest.model import BlockKey, FileEntry, Manifest

log = logging.getLogger(__name__)


MAX_PENDING_WRITES = 16  # blocks held in memory while they wait for the disk

@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | bytearray | None = None
    error: BaseException | None = None


class FetchChain:
    """Returns verified block bytes; the only way block data enters or leaves the cache."""

    def __init__(
        self,
        cache: BlockCache,
        tiers: Sequence[Tier],
        stats: FetchStats,
        hot: HotBlocks,
        io_limiter: trio.CapacityLimiter,
        timeout_s: float,
        hashes: BlockHashes | None = None,
    ) -> None:
        self.cache = cache
        self.hashes = hashes  # expected hashes of lazy entries (none in their manifest)
        self.tiers = list(tiers)
        self.stats = stats
        self.hot = hot
        self.io_limiter = io_limiter
        self.timeout_s = timeout_s
        self._flights: dict[BlockKey, _Flight] = {}
        self._writer: trio.Nursery | None = None
        self._writes = trio.CapacityLimiter(4)
        self._pending_writes = 0
        self._writes_idle = trio.Event()
        self._writes_idle.set()

    def start(self, nursery: trio.Nursery) -> None:
        """Write fetched blocks to the cache in the background (the read returns first)."""
        self._writer = nursery

    async def drain(self) -> None:
        """Wait until every background cache write has finished."""
        while self._pending_writes:
            await self._writes_idle.wait()

    def is_cached(self, manifest: Manifest, entry: FileEntry, index: int) -> bool:
        return self.cache.contains(entry.key(index, manifest.block_size))

    async def check_cached(self, manifest: Manifest, entry: FileEntry, index: int) -> bool:
        """True when block ``index`` is in the local cache and matches its hash.

        A corrupt cached block is dropped (as on a read). Used before the kernel is handed
        a blob to read by itself (passthrough), since no such read ever reaches the chain.
        """
        key = entry.key(index, manifest.block_size)
        if not self.cache.contains(key):
            return False
        _, length = entry.block_span(index, manifest.block_size)
        expected = await self.expected(manifest, entry, index)
        return await in_thread(self._from_cache, key, length, manifest.block_hash, expected,
                               limiter=self.io_limiter) is not None

    async def block(
        self, manifest: Manifest, entry: FileEntry, index: int, via_peers: bool = True
    ) -> bytes | bytearray:
        """Verified bytes of block ``index`` of ``entry`` (``via_peers=False``: no peer tiers)."""
        if not entry.block_hashes and (self.hashes is None or not entry.lazy):
            raise InvalidModelName(f"{entry.path}: manifest has no block hashes")
        key = entry.key(index, manifest.block_size)
        while True:
            data = self.hot.get(key)
            if data is not None:
                return data
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.data is not None:
                return flight.data
            # hydration wrote it in place (now in the cache) or gave up on it: load it ourselves
        flight = self._flights[key] = _Flight()
        self.cache.pin(key)  # a block being read is never evicted
        try:
            flight.data = await self._load(manifest, entry, index, key, via_peers)
            self.hot.put(key, flight.data)
            return flight.data
        except BaseException as exc:
            flight.error = exc if isinstance(exc, Exception) else BlockUnavailable("cancelled")
            raise
        finally:
            self.cache.unpin(key)
            del self._flights[key]
            flight.done.set()

    async def settle(self, keys: Sequence[BlockKey]) -> None:
        """Wait until no fetch of any of ``keys`` is in flight (e.g. hydration writing them)."""
        for key in keys:
            while (flight := self._flights.get(key)) is not None:
                await flight.done.wait()

    def claim(self, key: BlockKey) -> _Flight | None:
        """Take the single flight of ``key`` for an in-place write (None: someone else has it).

        Readers of ``key`` wait for ``release`` and then read the cache (or fetch it themselves)."""
        if key in self._flights:
            return None
        flight = self._flights[key] = _Flight()
        return flight

    def release(self, key: BlockKey, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.set()

    async def expected(self, manifest: Manifest, entry: FileEntry, index: int) -> bytes:
        """The digest block ``index`` must have (asked from the server for lazy entries)."""
        if entry.lazy and self.hashes is not None:
            return await self.hashes.get(manifest, entry, index)
        if not entry.block_hashes:
            raise InvalidModelName(f"{entry.path}: manifest has no block hashes")
        return entry.block_hashes[index]

    async def _load(
        self, manifest: Manifest, entry: FileEntry, index: int, key: BlockKey, via_peers: bool = True
    ) -> bytes | bytearray:
        _, length = entry.block_span(index, manifest.block_size)
        if entry.lazy and self.hashes is not None:  # hashes come from the server, on demand
            expected = await self.hashes.get(manifest, entry, index)
            entry = self.hashes.view(manifest, entry)
        else:
            expected = entry.block_hashes[index]
        start = time.monotonic()
        data = await in_thread(self._from_cache, key, length, manifest.block_hash, expected,
                               limiter=self.io_limiter)
        if data is not None:
            self.stats.got("local", length, time.monotonic() - start)
            return data
        tiers = [t for t in self.tiers if via_peers or not getattr(t, "is_peer", False)]
        raw = await self._remote(tiers, manifest, entry, index, length, expected)
        if self._writer is None or self._pending_writes >= MAX_PENDING_WRITES:  # backpressure
            await in_thread(self._store, key, raw, limiter=self.io_limiter)
        else:  # the reader gets the bytes now; a write failure never fails a read anyway
            if not self._pending_writes:  # one event per busy period: every drain() sees it set
                self._writes_idle = trio.Event()
            self._pending_writes += 1
            self._writer.start_soon(guarded, self.stats, "cache-write", self._store_in_background, key, raw)
        return raw

    async def _store_in_background(self, key: BlockKey, raw: bytes | bytearray) -> None:
        try:
            await in_thread(self._store, key, raw, limiter=self._writes)
        finally:
            self._pending_writes -= 1
            if not self._pending_writes:
                self._writes_idle.set()

    async def _remote(
        self, tiers: Sequence[Tier], manifest: Manifest, entry: FileEntry, index: int,
        length: int, expected: bytes,
    ) -> bytes | bytearray:
        """Try ``tiers`` in order; a failure starts the next one, so does a slow hedged tier."""
        errors: list[str] = []
        won: list[bytes | bytearray] = []
        fatal: list[MxfsError] = []
        async with trio.open_nursery() as nursery:
            for tier in tiers:
                moved_on = trio.Event()
                nursery.start_soon(self._attempt, tier, manifest, entry, index, length, expected,
                                   moved_on, won, errors, fatal, nursery.cancel_scope)
                hedge = getattr(tier, "hedge_after", None)
                with trio.move_on_after(hedge() if hedge is not None else math.inf) as waited:
                    await moved_on.wait()
                if waited.cancelled_caught and tier is not tiers[-1]:
                    self.stats.hedged(tier.name)
                    log.debug("block %d of %s: %s is slow, hedging to the next tier", index, entry.path, tier.name)
        if fatal:  # not a tier failure (e.g. a bad request): surface it unwrapped
            raise fatal[0]
        if won:
            return won[0]
        raise BlockUnavailable(
            f"block {index} of {manifest.name}/{entry.path} unavailable: " + "; ".join(errors or ["no tiers"])
        )

    async def _attempt(
        self, tier: Tier, manifest: Manifest, entry: FileEntry, index: int, length: int, expected: bytes,
        moved_on: trio.Event, won: list[bytes | bytearray], errors: list[str], fatal: list[MxfsError],
        scope: trio.CancelScope,
    ) -> None:
        """One tier's try; on success it records the bytes and cancels the other attempts."""
        start = time.monotonic()
        try:
            with trio.fail_after(self.timeout_s):
                raw = await tier.fetch(manifest, entry, index)
        except trio.TooSlowError:
            self.stats.failed(tier.name, "timeout")
            errors.append(f"{tier.name}: timed out after {self.timeout_s:g}s")
            moved_on.set()
            return
        except (BlockUnavailable, SourceError) as exc:
            self.stats.failed(tier.name, type(exc).__name__)
            errors.append(f"{tier.name}: {exc}")
            moved_on.set()
            return
        except MxfsError as exc:
            fatal.append(exc)
            scope.cancel()
            return
        ok = len(raw) == length and (getattr(tier, "verifies", False)
                                    or await in_thread(block_ok, manifest.block_hash, raw, expected))
        if not ok:
            self.stats.bad_hash(tier.name)
            tier.quarantine(manifest, entry, index)
            log.warning("block %d of %s from %s failed verification; skipping tier", index, entry.path, tier.name)
            errors.append(f"{tier.name}: bad bytes")
            moved_on.set()
            return
        if won:
            return
        self.stats.got(tier.name, length, time.monotonic() - start)
        won.append(raw)
        scope.cancel()

    def _from_cache(self, key: BlockKey, length: int, algorithm: str, expected: bytes) -> bytes | None:
        trusted = self.cache.is_verified(key)  # checked since it was written, by this process
        data = self.cache.read(key, length)
        if data is None:
            return None
        if trusted or block_ok(algorithm, data, expected):
            self.cache.mark_verified(key)
            return data
        self.stats.bad_hash("local")
        log.warning("cached block %s is corrupt; dropping it and refetching", key)
        self.cache.discard(key)
        return None

    def _store(self, key: BlockKey, data: bytes | bytearray) -> None:
        self.cache.put(key, data)  # a disk or index failure is counted there; the read still succeeds
        self.stats.cache_used.set(self.cache.used)
