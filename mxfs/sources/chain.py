"""The fetch chain: memory -> local cache -> remote tiers, each block verified by its hash.

Concurrent requests for one block share a single fetch. A tier that returns bytes that
fail the hash is skipped (and told, so it can quarantine itself); a failing cache write
never fails a read.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks
from mxfs.errors import BlockUnavailable, InvalidModelName, SourceError
from mxfs.manifest.model import BlockKey, FileEntry, Manifest
from mxfs.sources.base import Tier
from mxfs.sources.stats import FetchStats
from mxfs.sources.threads import in_thread

log = logging.getLogger(__name__)


def digest_ok(data: bytes | bytearray | memoryview, expected: bytes) -> bool:
    """sha256 check (hashlib releases the GIL, so call it from a worker thread)."""
    return hashlib.sha256(data).digest() == expected


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
    ) -> None:
        self.cache = cache
        self.tiers = list(tiers)
        self.stats = stats
        self.hot = hot
        self.io_limiter = io_limiter
        self.timeout_s = timeout_s
        self._flights: dict[BlockKey, _Flight] = {}

    def is_cached(self, manifest: Manifest, entry: FileEntry, index: int) -> bool:
        return self.cache.contains(entry.key(index, manifest.block_size))

    async def block(self, manifest: Manifest, entry: FileEntry, index: int) -> bytes | bytearray:
        """Verified bytes of block ``index`` of ``entry``."""
        if not entry.block_hashes:
            raise InvalidModelName(f"{entry.path}: manifest has no block hashes")
        key = entry.key(index, manifest.block_size)
        data = self.hot.get(key)
        if data is not None:
            return data
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.data is not None
            return flight.data
        flight = self._flights[key] = _Flight()
        self.cache.pin(key)  # a block being read is never evicted
        try:
            flight.data = await self._load(manifest, entry, index, key)
            self.hot.put(key, flight.data)
            return flight.data
        except BaseException as exc:
            flight.error = exc if isinstance(exc, Exception) else BlockUnavailable("cancelled")
            raise
        finally:
            self.cache.unpin(key)
            del self._flights[key]
            flight.done.set()

    async def _load(
        self, manifest: Manifest, entry: FileEntry, index: int, key: BlockKey
    ) -> bytes | bytearray:
        _, length = entry.block_span(index, manifest.block_size)
        expected = entry.block_hashes[index]
        start = time.monotonic()
        data = await in_thread(self._from_cache, key, length, expected, limiter=self.io_limiter)
        if data is not None:
            self.stats.got("local", length, time.monotonic() - start)
            return data
        errors: list[str] = []
        for tier in self.tiers:
            start = time.monotonic()
            try:
                with trio.fail_after(self.timeout_s):
                    raw = await tier.fetch(manifest, entry, index)
            except trio.TooSlowError:
                self.stats.failed(tier.name, "timeout")
                errors.append(f"{tier.name}: timed out after {self.timeout_s:g}s")
                continue
            except (BlockUnavailable, SourceError) as exc:
                self.stats.failed(tier.name, type(exc).__name__)
                errors.append(f"{tier.name}: {exc}")
                continue
            if len(raw) != length or not await in_thread(digest_ok, raw, expected):
                self.stats.bad_hash(tier.name)
                tier.quarantine(manifest, entry, index)
                log.warning("block %s from %s failed verification; skipping tier", key, tier.name)
                errors.append(f"{tier.name}: bad bytes")
                continue
            self.stats.got(tier.name, length, time.monotonic() - start)
            await in_thread(self._store, key, raw, limiter=self.io_limiter)
            return raw
        raise BlockUnavailable(
            f"block {index} of {manifest.name}/{entry.path} unavailable: " + "; ".join(errors or ["no tiers"])
        )

    def _from_cache(self, key: BlockKey, length: int, expected: bytes) -> bytes | None:
        data = self.cache.read(key, length)
        if data is None:
            return None
        if digest_ok(data, expected):
            return data
        self.stats.bad_hash("local")
        log.warning("cached block %s is corrupt; dropping it and refetching", key)
        self.cache.discard(key)
        return None

    def _store(self, key: BlockKey, data: bytes | bytearray) -> None:
        try:
            self.cache.put(key, data)
        except OSError as exc:  # e.g. ENOSPC: the read still succeeds
            log.warning("cannot cache block %s: %s", key, exc)
        self.stats.cache_used.set(self.cache.used)
