"""A FUSE session over /dev/fuse driven from trio: decode requests, call the filesystem,
encode replies. Policy (what to cache, when to pass through) lives in the filesystem.

One trio thread serves every request: the /dev/fuse descriptor is non-blocking and the
loop waits for it with ``trio.lowlevel.wait_readable``; each request runs as its own
task, so a slow block fetch never holds up a ``stat``. Replies are written with
``writev`` (header + payload, no join); a read answered from a local file is one
``writev`` of the header and a view of a mapping of that file: the kernel copies the bytes
once, from the file's page cache into the reply (no byte enters Python).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from mxfs.fuse.interface import (
    Attr,
    DirEntry,
    Entry,
    FileRange,
    FsStats,
    FuseError,
    Opened,
)
from mxfs.fuse.kernel import protocol as p
from mxfs.fuse.kernel.protocol import InitFlag, Opcode, OpenFlag
from mxfs.fuse.kernel.residency import resident

log = logging.getLogger(__name__)

MAX_WRITE = 128 * 1024  # read-only: only bounds the request buffer the kernel demands
MAX_PAGES = 256  # up to 1 MiB per READ: 8x fewer requests than 128 KiB on a cold read (see docs)
READ_BUFFER = MAX_WRITE + 4096
_U32 = struct.Struct("<I")

#: what this session asks for; the kernel grants the intersection with what it offers
WANTED = (InitFlag.ASYNC_READ | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.DO_READDIRPLUS
          | InitFlag.READDIRPLUS_AUTO | InitFlag.ABORT_ERROR | InitFlag.EXPLICIT_INVAL_DATA
          | InitFlag.INIT_EXT)


@dataclass(frozen=True)
class Granted:
    """The outcome of INIT: protocol minor and what both sides agreed on."""

    minor: int
    flags: InitFlag
    max_readahead: int
    max_write: int
    max_pages: int
    max_stack_depth: int

    @property
    def passthrough(self) -> bool:
        return bool(self.flags & InitFlag.PASSTHROUGH)

    def has(self, flag: InitFlag) -> bool:
        return bool(self.flags & flag)


class Filesystem(Protocol):
    """What a session calls; every method may raise FuseError."""

    def connected(self, granted: Granted, backing: Any, notifier: Any) -> None: ...
    async def lookup(self, parent: int, name: bytes) -> Entry: ...
    def forget(self, items: Sequence[tuple[int, int]]) -> None: ...
    async def getattr(self, inode: int) -> Entry: ...
    async def open(self, inode: int, flags: int) -> Opened: ...
    async def read(self, fh: int, offset: int, size: int) -> bytes | bytearray | memoryview | FileRange: ...
    async def release(self, fh: int) -> None: ...
    async def opendir(self, inode: int) -> int: ...
    async def readdir(self, fh: int, offset: int) -> Sequence[DirEntry]: ...
    async def releasedir(self, fh: int) -> None: ...
    async def getxattr(self, inode: int, name: bytes) -> bytes: ...
    async def listxattr(self, inode: int) -> Sequence[bytes]: ...
    async def statfs(self) -> FsStats: ...


@dataclass(frozen=True)
class Request:
    """A decoded request header; ``body`` is the opcode's argument bytes (decoded by its handler)."""

    fd: int  # the descriptor it was read from: its reply goes there
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: memoryview


def _name(body: memoryview) -> bytes:
    raw = bytes(body)
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _attr(a: Attr) -> bytes:
    sec, nsec = divmod(a.time_ns, 1_000_000_000)
    return p.ATTR.pack(a.inode, a.size, a.blocks, sec, sec, sec, nsec, nsec, nsec, a.mode, a.nlink,
                       a.uid, a.gid, 0, a.blksize, 0)


def _valid(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def _entry(e: Entry) -> bytes:
    es, ens = _valid(e.entry_timeout)
    as_, ans = _valid(e.attr_timeout)
    return p.ENTRY_OUT_HEAD.pack(e.attr.inode, 0, es, as_, ens, ans) + _attr(e.attr)


class Backing:
    """FUSE_DEV_IOC_BACKING_OPEN/CLOSE on the session's descriptor (kernel passthrough)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def open(self, fd: int) -> int:
        arg = bytearray(p.BACKING_MAP.pack(fd, 0, 0))
        return fcntl.ioctl(self._fd, p.DEV_IOC_BACKING_OPEN, arg, True)  # the result is the id

    def close(self, backing_id: int) -> None:
        fcntl.ioctl(self._fd, p.DEV_IOC_BACKING_CLOSE, bytearray(_U32.pack(backing_id)), True)


class Notifier:
    """Unsolicited messages (unique 0, the code in the error field)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def store(self, inode: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        arg = p.NOTIFY_STORE_OUT.pack(inode, offset, len(data), 0)
        head = p.OUT_HEADER.pack(p.OUT_HEADER.size + len(arg) + len(data), p.Notify.STORE, 0)
        os.writev(self._fd, [head, arg, data])

    def invalidate(self, inode: int) -> None:
        arg = p.NOTIFY_INVAL_INODE_OUT.pack(inode, 0, 0)  # len 0 = to the end
        os.writev(self._fd, [p.OUT_HEADER.pack(p.OUT_HEADER.size + len(arg), p.Notify.INVAL_INODE, 0), arg])


def clone(fd: int) -> int:
    """A new /dev/fuse descriptor on the same connection, with its own processing queue."""
    new = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(new, p.DEV_IOC_CLONE, bytearray(_U32.pack(fd)), True)
    except OSError:
        os.close(new)
        raise
    return new


class Session:
    """Serve ``fs`` on the mounted descriptor ``fd`` until the filesystem is unmounted."""

    def __init__(self, fs: Filesystem, fd: int, passthrough: bool = True, max_background: int = 64,
                 io_limiter: trio.CapacityLimiter | None = None, reader_threads: int = 0) -> None:
        self.fs = fs
        self.reader_threads = reader_threads
        self.fd = fd
        self.want_passthrough = passthrough
        self.max_background = max_background
        self.granted: Granted | None = None
        self.initialized = trio.Event()
        self._io_limiter = io_limiter or trio.CapacityLimiter(8)
        self._pending: dict[int, trio.CancelScope] = {}
        self._destroyed = False
        self._handlers: dict[int, Callable[[Request], Any]] = {
            Opcode.LOOKUP: self._lookup, Opcode.GETATTR: self._getattr, Opcode.OPEN: self._open,
            Opcode.READ: self._read, Opcode.RELEASE: self._release, Opcode.FLUSH: self._ok,
            Opcode.OPENDIR: self._opendir, Opcode.READDIR: self._readdir,
            Opcode.READDIRPLUS: self._readdirplus, Opcode.RELEASEDIR: self._releasedir,
            Opcode.GETXATTR: self._getxattr, Opcode.LISTXATTR: self._listxattr, Opcode.STATFS: self._statfs,
            Opcode.ACCESS: self._access, Opcode.DESTROY: self._destroy,
        }

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and dispatch requests until the kernel reports the filesystem gone (ENODEV)."""
        if self.reader_threads:
            await self._run_threads()
        else:
            await self._run_polling()
        log.debug("fuse session ended")

    async def _run_polling(self) -> None:
        """The default: a non-blocking descriptor read on the trio thread when it is readable."""
        os.set_blocking(self.fd, False)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    raw = os.read(self.fd, READ_BUFFER)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.fd)
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.ENOENT):  # interrupted before we read it
                        continue
                    if exc.errno in (errno.ENODEV, errno.ECONNABORTED):  # unmounted / aborted
                        break
                    raise
                if not raw:  # the other end is gone (only a socket stand-in does this)
                    break
                self._dispatch(self.fd, raw, nursery)
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()

    async def _run_threads(self) -> None:
        """Alternative: blocking reads in threads, one per cloned descriptor (measured slower
        on a 2-core node, see docs/architecture.md; kept for that comparison)."""
        fds = [self.fd] + [clone(self.fd) for _ in range(self.reader_threads - 1)]
        send, receive = trio.open_memory_channel[tuple[int, bytes]](float("inf"))
        token = trio.lowlevel.current_trio_token()
        alive = [len(fds)]

        def reader(fd: int) -> None:
            try:
                while True:
                    try:
                        raw = os.read(fd, READ_BUFFER)
                    except OSError as exc:
                        if exc.errno in (errno.EINTR, errno.ENOENT):
                            continue
                        break
                    if not raw:
                        break
                    trio.from_thread.run_sync(send.send_nowait, (fd, raw), trio_token=token)
            except trio.RunFinishedError:
                return
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(_one_less, trio_token=token)

        def _one_less() -> None:
            alive[0] -= 1
            if not alive[0]:
                send.close()

        for fd in fds:
            threading.Thread(target=reader, args=(fd,), name=f"fuse-reader-{fd}", daemon=True).start()
        try:
            async with trio.open_nursery() as nursery:
                async for fd, raw in receive:
                    self._dispatch(fd, raw, nursery)
                nursery.cancel_scope.cancel()
        finally:
            for fd in fds[1:]:
                os.close(fd)

    def _dispatch(self, fd: int, raw: bytes, nursery: trio.Nursery) -> None:
        length, opcode, unique, nodeid, uid, gid, pid, _, _ = p.IN_HEADER.unpack_from(raw)
        req = Request(fd, opcode, unique, nodeid, uid, gid, pid, memoryview(raw)[p.IN_HEADER.size : length])
        if opcode == Opcode.INIT:
            self._init(req)
        elif opcode == Opcode.FORGET:
            (nlookup,) = p.FORGET_IN.unpack_from(req.body)
            self.fs.forget([(nodeid, nlookup)])
        elif opcode == Opcode.BATCH_FORGET:
            count, _ = p.BATCH_FORGET_IN.unpack_from(req.body)
            items = [p.FORGET_ONE.unpack_from(req.body, p.BATCH_FORGET_IN.size + i * p.FORGET_ONE.size)
                     for i in range(count)]
            self.fs.forget(items)
        elif opcode == Opcode.INTERRUPT:
            (target,) = p.INTERRUPT_IN.unpack_from(req.body)
            scope = self._pending.get(target)
            if scope is not None:
                scope.cancel()
        elif opcode in self._handlers:
            scope = self._pending[unique] = trio.CancelScope()
            nursery.start_soon(self._serve, req, scope)
        elif opcode in p.WRITE_OPCODES:
            self._error(req, errno.EROFS)
        else:
            self._error(req, errno.ENOSYS)

    async def _serve(self, req: Request, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await self._handlers[req.opcode](req)
            if scope.cancelled_caught:
                self._error(req, errno.EINTR)
        except FuseError as exc:
            self._error(req, exc.errno)
        except Exception:
            log.exception("fuse %s failed", Opcode(req.opcode).name)
            self._error(req, errno.EIO)
        finally:
            self._pending.pop(req.unique, None)

    # -- replies -------------------------------------------------------------------------------

    def _send(self, fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        try:
            os.writev(fd, parts)
        except OSError as exc:
            # ENOENT: the request was interrupted or aborted meanwhile; ENODEV: unmounted
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.ECONNABORTED):
                raise

    def _reply(self, req: Request, *payload: bytes | bytearray | memoryview) -> None:
        """Answer on the descriptor the request came from (each clone has its own queue)."""
        size = p.OUT_HEADER.size + sum(len(x) for x in payload)
        self._send(req.fd, [p.OUT_HEADER.pack(size, 0, req.unique), *payload])

    def _error(self, req: Request, code: int) -> None:
        self._send(req.fd, [p.OUT_HEADER.pack(p.OUT_HEADER.size, -code, req.unique)])

    # -- INIT: the one place that negotiates ---------------------------------------------------

    def _init(self, req: Request) -> None:
        major, minor, max_readahead, flags = p.INIT_IN_COMPAT.unpack_from(req.body)
        if major != p.KERNEL_VERSION:
            log.error("kernel speaks FUSE %d.%d; this session needs major %d", major, minor, p.KERNEL_VERSION)
            if major > p.KERNEL_VERSION:  # the kernel will retry INIT with our major
                self._reply(req, p.INIT_OUT.pack(p.KERNEL_VERSION, p.KERNEL_MINOR_VERSION,
                                                        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            else:
                self._error(req, errno.EPROTO)
            return
        offered = InitFlag(flags)
        if flags & InitFlag.INIT_EXT and len(req.body) >= p.INIT_IN.size:
            flags2 = p.INIT_IN.unpack_from(req.body)[4]
            offered = InitFlag(flags | (flags2 << 32))
        wanted = WANTED | (InitFlag.PASSTHROUGH if self.want_passthrough else 0)
        granted = offered & wanted
        depth = 1 if granted & InitFlag.PASSTHROUGH else 0  # blobs live on a plain local filesystem
        minor = min(minor, p.KERNEL_MINOR_VERSION)
        max_pages = MAX_PAGES
        self.granted = Granted(minor, granted, max_readahead, MAX_WRITE, max_pages, depth)
        reply = p.INIT_OUT.pack(p.KERNEL_VERSION, minor, max_readahead, int(granted) & 0xFFFFFFFF,
                                self.max_background, self.max_background * 3 // 4, MAX_WRITE, 1,
                                max_pages, 0, int(granted) >> 32, depth, 0)
        if minor < 23:
            reply = reply[:24]  # FUSE_COMPAT_22_INIT_OUT_SIZE
        backing = Backing(self.fd) if self.granted.passthrough else None
        self.fs.connected(self.granted, backing, Notifier(self.fd))
        self._reply(req, reply)
        log.info("fuse protocol 7.%d, passthrough %s%s", minor,
                 "on" if self.granted.passthrough else "off",
                 "" if self.want_passthrough else " (--no-passthrough)")
        self.initialized.set()

    # -- handlers (typed arguments in, dataclasses out) ----------------------------------------

    async def _ok(self, req: Request) -> None:
        self._reply(req)

    async def _lookup(self, req: Request) -> None:
        self._reply(req, _entry(await self.fs.lookup(req.nodeid, _name(req.body))))

    async def _getattr(self, req: Request) -> None:
        e = await self.fs.getattr(req.nodeid)
        sec, nsec = _valid(e.attr_timeout)
        self._reply(req, p.ATTR_OUT_HEAD.pack(sec, nsec, 0), _attr(e.attr))

    async def _open(self, req: Request) -> None:
        flags, _ = p.OPEN_IN.unpack_from(req.body)
        o = await self.fs.open(req.nodeid, flags)
        open_flags = OpenFlag.NOFLUSH  # read-only: a close has nothing to flush
        if o.backing_id is not None:  # the kernel refuses KEEP_CACHE (or anything else) beside it
            open_flags |= OpenFlag.PASSTHROUGH
        elif o.keep_cache:
            open_flags |= OpenFlag.KEEP_CACHE
        self._reply(req, p.OPEN_OUT.pack(o.fh, open_flags, o.backing_id or 0))

    async def _read(self, req: Request) -> None:
        fh, offset, size, *_ = p.READ_IN.unpack_from(req.body)
        data = await self.fs.read(fh, offset, size)
        if isinstance(data, FileRange):
            try:
                cached, clean = resident(data.blob.fd, data.offset, data.length)
                if cached:  # a memory copy: inline, no worker-thread round trip
                    self._reply_from_file(req, data, drop=clean)
                else:  # the copy would wait for the disk
                    await trio.to_thread.run_sync(functools.partial(self._reply_from_file, req, data, from_disk=True),
                                                  limiter=self._io_limiter)
            finally:
                if data.done is not None:
                    data.done()
        else:
            self._reply(req, data)

    def _reply_from_file(self, req: Request, rng: FileRange, drop: bool = True, from_disk: bool = False) -> None:
        """Answer with ``rng``: inline, when every page is cached, one ``writev`` of the header
        and a view of the file's mapping (the kernel copies the range from the page cache into
        the reply); from a worker thread when it must come from the disk (``from_disk``), a
        ``pread`` first: a read through the file descriptor keeps the file's sequential
        readahead going (a copy from the mapping faults one request in at a time: 0.31-0.40x
        the raw disk read against 0.73-0.78x, ``bench/read_throughput.py --no-passthrough``),
        and next to the disk the extra copy is cheap. ``drop=False`` keeps the file's pages
        (dirty or under writeback: dropping them would wait for the disk here); else, with
        ``drop_cache``, they are unmapped and dropped, since the FUSE inode now holds the
        same bytes."""
        head = p.OUT_HEADER.pack(p.OUT_HEADER.size + rng.length, 0, req.unique)
        try:
            if from_disk:
                data = os.pread(rng.blob.fd, rng.length, rng.offset)
                if len(data) != rng.length:
                    raise OSError(errno.EIO, f"blob is short: {len(data)} of {rng.length} bytes at {rng.offset}")
                os.writev(req.fd, [head, data])
            else:
                with rng.blob.view(rng.offset, rng.length) as view:
                    os.writev(req.fd, [head, view])
            if rng.drop_cache and drop:
                rng.blob.forget(rng.offset, rng.length)
                os.posix_fadvise(rng.blob.fd, rng.offset, rng.length, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ECONNABORTED):  # interrupted, or unmounted
                return
            log.warning("reply from a blob failed (%s); answering EIO", exc)
            self._error(req, errno.EIO)

    async def _release(self, req: Request) -> None:
        fh, *_ = p.RELEASE_IN.unpack_from(req.body)
        with trio.CancelScope(shield=True):  # a release must always run to the end
            await self.fs.release(fh)
        self._reply(req)

    async def _opendir(self, req: Request) -> None:
        fh = await self.fs.opendir(req.nodeid)
        self._reply(req, p.OPEN_OUT.pack(fh, 0, 0))

    async def _readdir(self, req: Request, plus: bool = False) -> None:
        fh, offset, size, *_ = p.READ_IN.unpack_from(req.body)
        out: list[bytes] = []
        used = 0
        for d in await self.fs.readdir(fh, offset):
            a = d.entry.attr
            head = p.DIRENT.pack(a.inode, d.next_offset, len(d.name), (a.mode & 0o170000) >> 12)
            rec = (_entry(d.entry) if plus else b"") + head + d.name
            rec += b"\0" * (p.rec_align(len(rec)) - len(rec))
            if used + len(rec) > size:
                break
            out.append(rec)
            used += len(rec)
        self._reply(req, b"".join(out))

    async def _readdirplus(self, req: Request) -> None:
        await self._readdir(req, plus=True)

    async def _releasedir(self, req: Request) -> None:
        fh, *_ = p.RELEASE_IN.unpack_from(req.body)
        await self.fs.releasedir(fh)
        self._reply(req)

    def _sized(self, req: Request, want: int, value: bytes) -> None:
        if want == 0:
            self._reply(req, p.GETXATTR_OUT.pack(len(value), 0))
        elif want < len(value):
            self._error(req, errno.ERANGE)
        else:
            self._reply(req, value)

    async def _getxattr(self, req: Request) -> None:
        want, _ = p.GETXATTR_IN.unpack_from(req.body)
        value = await self.fs.getxattr(req.nodeid, _name(req.body[p.GETXATTR_IN.size :]))
        self._sized(req, want, value)

    async def _listxattr(self, req: Request) -> None:
        want, _ = p.GETXATTR_IN.unpack_from(req.body)
        names = await self.fs.listxattr(req.nodeid)
        self._sized(req, want, b"".join(n + b"\0" for n in names))

    async def _statfs(self, req: Request) -> None:
        s = await self.fs.statfs()
        self._reply(req, p.STATFS_OUT.pack(s.blocks, s.blocks_free, s.blocks_free, s.files, 0,
                                                  s.block_size, s.name_max, s.block_size, 0))

    async def _access(self, req: Request) -> None:
        mask, _ = p.ACCESS_IN.unpack_from(req.body)
        if mask & os.W_OK:
            raise FuseError(errno.EROFS)
        self._reply(req)

    async def _destroy(self, req: Request) -> None:
        self._destroyed = True
        self._reply(req)
