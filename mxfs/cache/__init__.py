"""Local block cache: sparse per-file blobs + an lmdb index, bounded with LRU eviction."""

from mxfs.cache.blocks import BlockCache
from mxfs.cache.memory import HotBlocks

__all__ = ["BlockCache", "HotBlocks"]
