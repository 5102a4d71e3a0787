"""The kernel session without a kernel: a SEQPACKET socket stands in for /dev/fuse
(one message per read, like the device), so INIT negotiation, dispatch, errors and
interrupts are checked byte for byte."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

import pytest
import trio

from mxfs.fuse.interface import Attr, Entry, FuseError, Opened
from mxfs.fuse.kernel import protocol as p
from mxfs.fuse.kernel.protocol import InitFlag, Opcode, OpenFlag
from mxfs.fuse.kernel.session import Session


class FakeFs:
    def __init__(self) -> None:
        self.granted = None
        self.backing = "unset"
        self.read_started = trio.Event()
        self.read_cancelled = False

    def connected(self, granted, backing, notifier) -> None:
        self.granted, self.backing = granted, backing

    async def lookup(self, parent: int, name: bytes) -> Entry:
        if name != b"hello":
            raise FuseError(errno.ENOENT)
        return Entry(Attr(5, stat.S_IFREG | 0o444, 11), 1.5, 2.0)

    async def open(self, inode: int, flags: int) -> Opened:
        return Opened(fh=77, keep_cache=True)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        self.read_started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.read_cancelled = True
            raise
        return b""

    def forget(self, items) -> None:
        pass


def request(opcode: int, unique: int, nodeid: int, body: bytes) -> bytes:
    return p.IN_HEADER.pack(p.IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 1, 0, 0) + body


def init_body(minor: int, flags: int) -> bytes:
    low, high = flags & 0xFFFFFFFF, flags >> 32
    if minor < 36:
        return p.INIT_IN_COMPAT.pack(7, minor, 131072, low)
    return p.INIT_IN.pack(7, minor, 131072, low | InitFlag.INIT_EXT, high)


async def exchange(kernel: socket.socket, message: bytes) -> tuple[int, int, bytes]:
    await trio.to_thread.run_sync(kernel.send, message)
    raw = await trio.to_thread.run_sync(kernel.recv, 1 << 16)
    length, error, unique = p.OUT_HEADER.unpack_from(raw)
    assert length == len(raw)
    return error, unique, raw[p.OUT_HEADER.size :]


def run_session(passthrough: bool, script) -> FakeFs:
    fs = FakeFs()
    kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def main() -> None:
        session = Session(fs, daemon.fileno(), passthrough=passthrough)
        with trio.fail_after(10):
            await serve(session)

    async def serve(session: Session) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            try:
                await script(kernel, fs)
            finally:
                kernel.shutdown(socket.SHUT_RDWR)

    with kernel, daemon:
        trio.run(main)
    return fs


@pytest.mark.parametrize("offer_passthrough, want, expect", [(True, True, True), (True, False, False),
                                                             (False, True, False)])
def test_init_grants_passthrough_only_when_both_sides_want_it(offer_passthrough, want, expect):
    offered = InitFlag.ASYNC_READ | InitFlag.MAX_PAGES | InitFlag.PARALLEL_DIROPS | InitFlag.POSIX_LOCKS
    if offer_passthrough:
        offered |= InitFlag.PASSTHROUGH

    async def script(kernel, fs) -> None:
        error, unique, out = await exchange(kernel, request(Opcode.INIT, 1, 0, init_body(45, offered)))
        assert (error, unique, len(out)) == (0, 1, p.INIT_OUT.size)
        fields = p.INIT_OUT.unpack(out)
        flags = InitFlag(fields[3] | (fields[10] << 32))
        assert bool(flags & InitFlag.PASSTHROUGH) is expect
        assert not flags & InitFlag.POSIX_LOCKS  # never granted what we did not ask for
        assert flags & InitFlag.ASYNC_READ and flags & InitFlag.MAX_PAGES
        assert fields[11] == (1 if expect else 0)  # max_stack_depth

    fs = run_session(want, script)
    assert fs.granted.passthrough is expect
    assert (fs.backing is not None) is expect


def test_old_kernel_without_init_ext_negotiates_down():
    async def script(kernel, fs) -> None:
        offered = InitFlag.ASYNC_READ | InitFlag.MAX_PAGES
        error, _, out = await exchange(kernel, request(Opcode.INIT, 1, 0, init_body(31, offered)))
        assert error == 0
        major, minor = struct.unpack_from("<II", out)
        assert (major, minor) == (7, 31)

    fs = run_session(True, script)
    assert fs.granted.minor == 31 and not fs.granted.passthrough and fs.backing is None


def test_requests_replies_errors_and_interrupts():
    async def script(kernel, fs) -> None:
        await exchange(kernel, request(Opcode.INIT, 1, 0, init_body(45, InitFlag.ASYNC_READ)))
        error, unique, out = await exchange(kernel, request(Opcode.LOOKUP, 2, 1, b"hello\0"))
        assert (error, unique) == (0, 2)
        nodeid, _, entry_valid, attr_valid, entry_nsec, _ = p.ENTRY_OUT_HEAD.unpack_from(out)
        assert (nodeid, entry_valid, entry_nsec, attr_valid) == (5, 1, 500_000_000, 2)
        assert p.ATTR.unpack_from(out, p.ENTRY_OUT_HEAD.size)[1] == 11  # size
        assert (await exchange(kernel, request(Opcode.LOOKUP, 3, 1, b"nope\0")))[0] == -errno.ENOENT
        assert (await exchange(kernel, request(Opcode.MKDIR, 4, 1, b"\0" * 8 + b"d\0")))[0] == -errno.EROFS
        assert (await exchange(kernel, request(Opcode.GETLK, 5, 5, b"\0" * 48)))[0] == -errno.ENOSYS
        error, _, out = await exchange(kernel, request(Opcode.OPEN, 6, 5, p.OPEN_IN.pack(os.O_RDONLY, 0)))
        fh, flags, backing = p.OPEN_OUT.unpack(out)
        assert (error, fh, backing) == (0, 77, 0)
        assert OpenFlag(flags) == OpenFlag.KEEP_CACHE | OpenFlag.NOFLUSH
        # a READ that never finishes until the kernel interrupts it
        await trio.to_thread.run_sync(kernel.send, request(Opcode.READ, 7, 5, p.READ_IN.pack(77, 0, 4096, 0, 0, 0, 0)))
        await fs.read_started.wait()
        error, unique, _ = await exchange(kernel, request(Opcode.INTERRUPT, 8, 0, p.INTERRUPT_IN.pack(7)))
        assert (error, unique) == (-errno.EINTR, 7)

    fs = run_session(True, script)
    assert fs.read_cancelled
