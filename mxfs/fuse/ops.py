"""The filesystem's operations: translate FUSE requests into tree lookups and block reads.

Transport-agnostic (plain dataclasses in and out, see ``interface.py``). Nothing here
fetches, caches or verifies; that is the reader's and the chain's job, and how an open
file is served (chain, blob, kernel passthrough) is ``passthrough.py``'s.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mxfs.cache.blocks import BlockCache
from mxfs.fetch.reader import BlobSpan, BlockReader, OpenFile
from mxfs.fetch.resolver import ManifestResolver
from mxfs.fetch.threads import in_thread
from mxfs.fuse.errnos import translated
from mxfs.fuse.interface import (
    Attr,
    BackingFiles,
    DirEntry,
    Entry,
    FileRange,
    FsStats,
    FuseError,
    Notifier,
    Opened,
)
from mxfs.fuse.passthrough import FileModes, InodeMode
from mxfs.fuse.stats import BLOB, CACHED, PASSTHROUGH, FuseStats
from mxfs.fuse.tree import Kind, Node, Tree
from mxfs.manifest.names import ModelRef

ATTR_TIMEOUT = 300.0
XATTR_PREFIX = "user.mxfs."
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass
class _Handle:
    node: Node
    reader: OpenFile | None = None  # model files
    mode: InodeMode | None = None

    @property
    def label(self) -> str:
        m, e = self.node.manifest, self.node.entry
        return f"{m.name}/{e.path}" if m is not None and e is not None else ""


class MxfsOperations:
    """Read-only model tree; models appear on first lookup, bytes on first read."""

    def __init__(
        self,
        tree: Tree,
        resolver: ManifestResolver,
        reader: BlockReader,
        cache: BlockCache,
        root_xattrs: dict[str, str] | None = None,
        on_error: Callable[[str, int], None] | None = None,
        stats: FuseStats | None = None,
    ) -> None:
        self.tree = tree
        self.resolver = resolver
        self.reader = reader
        self.cache = cache
        self.root_xattrs = root_xattrs or {}
        self.stats = stats or FuseStats()
        self.modes = FileModes(cache, reader.chain, self.stats)
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, int] = {}
        self._fh = itertools.count(1)
        self._started_ns = time.time_ns()
        self.on_error = on_error

    def connected(self, granted: object, backing: BackingFiles | None, notifier: Notifier) -> None:
        """The transport is up: ``backing`` is set when the kernel granted passthrough."""
        self.modes.backing = backing
        self.modes.notifier = notifier

    async def store_page_cache(self, inode: int, offset: int, data: bytes | bytearray) -> None:
        """Warm the kernel page cache of ``inode`` (prefetch ``--page-cache``).

        In a worker thread: the kernel locks the inode's pages meanwhile, and a read waiting
        on one of them needs this (trio) thread to be answered. Skipped with passthrough: a
        complete file is then read from its blob's page cache, which hydration just filled;
        a FUSE copy would be a second cache of the same bytes.
        """
        if self.modes.notifier is not None and self.modes.backing is None:
            await in_thread(self.modes.notifier.store, inode, offset, data)

    # -- model resolution --------------------------------------------------------------

    async def ensure_model(self, ref: ModelRef) -> None:
        manifest = await self.resolver.resolve(ref)
        self.tree.add_model(ref, manifest)

    # -- attributes -----------------------------------------------------------------------

    def _attr(self, node: Node) -> Attr:
        if node.is_dir:
            return Attr(node.inode, stat.S_IFDIR | 0o555, 4096, nlink=2, time_ns=self._started_ns)
        return Attr(node.inode, stat.S_IFREG | 0o444, node.size, time_ns=self._started_ns)

    def _entry(self, node: Node) -> Entry:
        return Entry(self._attr(node), ATTR_TIMEOUT if node.listed else 0.0, ATTR_TIMEOUT)

    def _node(self, inode: int) -> Node:
        try:
            return self.tree.get(inode)
        except KeyError:
            raise FuseError(errno.ENOENT) from None

    @translated("lookup")
    async def lookup(self, parent: int, name: bytes) -> Entry:
        text = os.fsdecode(name)
        self._node(parent)
        node = self.tree.child(parent, text)
        if node is None:
            ref = self.tree.pending_ref(parent, text)
            if ref is not None:
                await self.ensure_model(ref)
            node = self.tree.child(parent, text)
        if node is None:
            raise FuseError(errno.ENOENT)
        return self._entry(node)

    @translated("getattr")
    async def getattr(self, inode: int) -> Entry:
        return self._entry(self._node(inode))

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        """Inodes live as long as the mount; nothing to free."""

    @translated("statfs")
    async def statfs(self) -> FsStats:
        return FsStats(4096, max(self.cache.limit, self.cache.used) // 4096,
                       max(0, self.cache.limit - self.cache.used) // 4096, len(self.tree.nodes))

    # -- directories ------------------------------------------------------------------------

    @translated("opendir")
    async def opendir(self, inode: int) -> int:
        if not self._node(inode).is_dir:
            raise FuseError(errno.ENOTDIR)
        fh = next(self._fh)
        self._dirs[fh] = inode
        return fh

    @translated("readdir")
    async def readdir(self, fh: int, offset: int) -> list[DirEntry]:
        entries = self.tree.listing(self._dirs[fh])
        return [DirEntry(os.fsencode(name), self._entry(node), index + 1)
                for index, (name, node) in enumerate(entries) if index >= offset]

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ---------------------------------------------------------------------------------

    @translated("open")
    async def open(self, inode: int, flags: int) -> Opened:
        node = self._node(inode)
        if node.is_dir:
            raise FuseError(errno.EISDIR)
        if flags & _WRITE_FLAGS:
            raise FuseError(errno.EROFS)
        handle = _Handle(node)
        if node.entry is not None and node.manifest is not None:
            handle.reader = OpenFile(node.manifest, node.entry)
            handle.mode = await self.modes.open(inode, node.manifest, node.entry)
        fh = next(self._fh)
        self._handles[fh] = handle
        # content never changes for an inode: let the kernel keep its page cache
        backing = handle.mode.backing_id if handle.mode is not None else None
        return Opened(fh, keep_cache=True, backing_id=backing)

    @translated("read")
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview | FileRange:
        handle = self._handles[fh]
        if handle.reader is None:
            return (handle.node.content or b"")[off : off + size]
        mode = handle.mode
        if mode is not None and mode.blob is not None and mode.mode in (BLOB, PASSTHROUGH):
            length = max(0, min(size, handle.node.size - off))
            self.stats.read(handle.label, mode.mode, length, from_blob=True)
            return FileRange(mode.blob, off, length, drop_cache=True)
        data = await self.reader.read(handle.reader, off, size)
        if isinstance(data, BlobSpan):  # verified in the blob: handed on without a copy
            self.stats.read(handle.label, CACHED, data.length, from_blob=True)
            return FileRange(data.blob, data.offset, data.length, drop_cache=True, done=data.release)
        self.stats.read(handle.label, CACHED, len(data))
        return data

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None and handle.reader is not None:
            self.reader.close(handle.reader)
        if handle is not None and handle.mode is not None:
            self.modes.release(handle.node.inode)

    # -- extended attributes -------------------------------------------------------------------

    def xattrs(self, node: Node) -> dict[str, str]:
        """What a loader learns about a path: mxfs-backed, manifest identity, backing file."""
        out: dict[str, str] = {}
        if node.kind is Kind.ROOT:
            out.update(self.root_xattrs)
            out["passthrough"] = "on" if self.modes.backing is not None else "off"
        manifest = node.manifest
        if manifest is not None:
            out["model"] = manifest.name
            out["revision"] = manifest.revision
            out["block_size"] = str(manifest.block_size)
        if node.entry is not None and manifest is not None:
            e = node.entry
            out["path"] = e.path
            if e.digest_verified:  # else sha256 is an origin version id, not a digest of the bytes
                out["sha256"] = e.sha256
            out["size"] = str(e.size)
            if self.cache.file_complete(e, manifest.block_size):
                out["backing"] = str(self.cache.blob_path(e.sha256))
            mode = self.modes.mode_of(node.inode)
            out["mode"] = mode.mode if mode is not None and mode.opens else ""
        return {k: v for k, v in out.items() if v}

    @translated("getxattr")
    async def getxattr(self, inode: int, name: bytes) -> bytes:
        key = os.fsdecode(name)
        node = self._node(inode)
        if key.startswith(XATTR_PREFIX):
            if node.entry is not None:
                await self.reader.chain.drain()  # bytes already read count as cached ("backing")
            value = self.xattrs(node).get(key[len(XATTR_PREFIX) :])
            if value is not None:
                return value.encode()
        raise FuseError(errno.ENODATA)

    @translated("listxattr")
    async def listxattr(self, inode: int) -> list[bytes]:
        node = self._node(inode)
        if node.entry is not None:
            await self.reader.chain.drain()
        return [(XATTR_PREFIX + k).encode() for k in self.xattrs(node)]


__all__ = ["BLOB", "CACHED", "PASSTHROUGH", "MxfsOperations"]
