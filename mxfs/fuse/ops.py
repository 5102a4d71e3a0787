"""pyfuse3 operations: translate kernel requests into tree lookups and block reads.

Nothing here fetches, caches or verifies; that is the reader's and the chain's job.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from collections.abc import Callable

import pyfuse3

from mxfs.cache.blocks import BlockCache
from mxfs.fetch.reader import BlockReader, OpenFile
from mxfs.fetch.resolver import ManifestResolver
from mxfs.fuse.errnos import translated
from mxfs.fuse.tree import Kind, Node, Tree
from mxfs.manifest.names import ModelRef

ATTR_TIMEOUT = 300.0
XATTR_PREFIX = "user.mxfs."
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


class MxfsOperations(pyfuse3.Operations):
    """Read-only model tree; models appear on first lookup, bytes on first read."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        resolver: ManifestResolver,
        reader: BlockReader,
        cache: BlockCache,
        root_xattrs: dict[str, str] | None = None,
        on_error: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.resolver = resolver
        self.reader = reader
        self.cache = cache
        self.root_xattrs = root_xattrs or {}
        self._handles: dict[int, OpenFile | Node] = {}
        self._fh = itertools.count(1)
        self._started_ns = time.time_ns()
        self.on_error = on_error

    # -- model resolution --------------------------------------------------------------

    async def ensure_model(self, ref: ModelRef) -> None:
        manifest = await self.resolver.resolve(ref)
        self.tree.add_model(ref, manifest)

    # -- attributes -----------------------------------------------------------------------

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.entry_timeout = ATTR_TIMEOUT if node.listed else 0
        a.attr_timeout = ATTR_TIMEOUT
        if node.is_dir:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
            a.st_size = 4096
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = node.size
        a.st_uid = a.st_gid = 0
        a.st_blksize = 1 << 20
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._started_ns
        return a

    @translated("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        node = self.tree.child(parent_inode, text)
        if node is None:
            ref = self.tree.pending_ref(parent_inode, text)
            if ref is not None:
                await self.ensure_model(ref)
            node = self.tree.child(parent_inode, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(node)

    @translated("getattr")
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self.tree.get(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """Inodes live as long as the mount; nothing to free."""

    @translated("statfs")
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = max(self.cache.limit, self.cache.used) // 4096
        s.f_bfree = s.f_bavail = max(0, self.cache.limit - self.cache.used) // 4096
        s.f_files = len(self.tree.nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- directories ------------------------------------------------------------------------

    @translated("opendir")
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.tree.get(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @translated("readdir")
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self.tree.listing(fh)
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attr(node), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    # -- files ---------------------------------------------------------------------------------

    @translated("open")
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.tree.get(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = next(self._fh)
        if node.entry is not None and node.manifest is not None:
            self._handles[fh] = OpenFile(node.manifest, node.entry)
        else:
            self._handles[fh] = node
        # content never changes for an inode: let the kernel keep its page cache
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    @translated("read")
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handles[fh]
        if isinstance(handle, Node):
            return (handle.content or b"")[off : off + size]
        return await self.reader.read(handle, off, size)

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # -- extended attributes -------------------------------------------------------------------

    def xattrs(self, node: Node) -> dict[str, str]:
        """What a loader learns about a path: mxfs-backed, manifest identity, backing file."""
        out: dict[str, str] = {}
        if node.kind is Kind.ROOT:
            out.update(self.root_xattrs)
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
        return out

    @translated("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = os.fsdecode(name)
        if key.startswith(XATTR_PREFIX):
            if self.tree.get(inode).entry is not None:
                await self.reader.chain.drain()  # bytes already read count as cached ("backing")
            value = self.xattrs(self.tree.get(inode)).get(key[len(XATTR_PREFIX) :])
            if value is not None:
                return value.encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @translated("listxattr")
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if self.tree.get(inode).entry is not None:
            await self.reader.chain.drain()
        return [(XATTR_PREFIX + k).encode() for k in self.xattrs(self.tree.get(inode))]
