"""The FUSE kernel protocol: constants and struct layouts, nothing else.

Taken from the kernel's ``include/uapi/linux/fuse.h`` (protocol 7.45). Each name notes the
minor version it appeared in where that matters for negotiation. All structs are native
little-endian with the kernel's 64-bit padding; ``struct.Struct`` formats use ``<`` so
no implicit padding sneaks in.
"""

from __future__ import annotations

import enum
import struct

KERNEL_VERSION = 7
#: the newest minor this session speaks; the kernel and we use the smaller of the two
KERNEL_MINOR_VERSION = 45
ROOT_ID = 1
MIN_READ_BUFFER = 8192
UNIQUE_RESEND = 1 << 63  # 7.40: set in a request's unique when the kernel resends it


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2  # no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34  # 7.3
    CREATE = 35  # 7.3
    INTERRUPT = 36  # 7.7
    BMAP = 37  # 7.8
    DESTROY = 38  # 7.8
    IOCTL = 39  # 7.11
    POLL = 40  # 7.11
    NOTIFY_REPLY = 41  # 7.15
    BATCH_FORGET = 42  # 7.16, no reply
    FALLOCATE = 43  # 7.19
    READDIRPLUS = 44  # 7.21
    RENAME2 = 45  # 7.23
    LSEEK = 46  # 7.24
    COPY_FILE_RANGE = 47  # 7.28
    SETUPMAPPING = 48  # 7.31
    REMOVEMAPPING = 49  # 7.31
    SYNCFS = 50  # 7.34
    TMPFILE = 51  # 7.37
    STATX = 52  # 7.39
    COPY_FILE_RANGE_64 = 53  # 7.45


#: requests that modify the tree or file contents (answered EROFS by a read-only fs)
WRITE_OPCODES = frozenset({
    Opcode.SETATTR, Opcode.SYMLINK, Opcode.MKNOD, Opcode.MKDIR, Opcode.UNLINK, Opcode.RMDIR,
    Opcode.RENAME, Opcode.LINK, Opcode.WRITE, Opcode.SETXATTR, Opcode.REMOVEXATTR, Opcode.CREATE,
    Opcode.FALLOCATE, Opcode.RENAME2, Opcode.COPY_FILE_RANGE, Opcode.TMPFILE, Opcode.COPY_FILE_RANGE_64,
})
#: requests the kernel never waits a reply for
NO_REPLY_OPCODES = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET})


class Notify(enum.IntEnum):
    """Unsolicited messages from the daemon: ``fuse_out_header.error`` holds the code, unique 0."""

    POLL = 1  # 7.11
    INVAL_INODE = 2  # 7.12
    INVAL_ENTRY = 3  # 7.12
    STORE = 4  # 7.15
    RETRIEVE = 5  # 7.15
    DELETE = 6  # 7.18
    RESEND = 7  # 7.40
    INC_EPOCH = 8  # 7.44
    PRUNE = 9  # 7.45


class InitFlag(enum.IntFlag):
    """``fuse_init_in/out.flags`` (bits 0-31) and ``flags2`` (shifted to bits 32-63)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7  # 7.14
    SPLICE_MOVE = 1 << 8  # 7.14
    SPLICE_READ = 1 << 9  # 7.14
    FLOCK_LOCKS = 1 << 10  # 7.17
    HAS_IOCTL_DIR = 1 << 11  # 7.18
    AUTO_INVAL_DATA = 1 << 12  # 7.20
    DO_READDIRPLUS = 1 << 13  # 7.21
    READDIRPLUS_AUTO = 1 << 14  # 7.21
    ASYNC_DIO = 1 << 15  # 7.22
    WRITEBACK_CACHE = 1 << 16  # 7.23
    NO_OPEN_SUPPORT = 1 << 17  # 7.23
    PARALLEL_DIROPS = 1 << 18  # 7.25
    HANDLE_KILLPRIV = 1 << 19  # 7.26
    POSIX_ACL = 1 << 20  # 7.26
    ABORT_ERROR = 1 << 21  # 7.27
    MAX_PAGES = 1 << 22  # 7.28
    CACHE_SYMLINKS = 1 << 23  # 7.28
    NO_OPENDIR_SUPPORT = 1 << 24  # 7.29
    EXPLICIT_INVAL_DATA = 1 << 25  # 7.30
    MAP_ALIGNMENT = 1 << 26  # 7.31
    SUBMOUNTS = 1 << 27  # 7.32
    HANDLE_KILLPRIV_V2 = 1 << 28  # 7.33
    SETXATTR_EXT = 1 << 29  # 7.33
    INIT_EXT = 1 << 30  # 7.36: flags2 is valid
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32  # 7.36
    HAS_INODE_DAX = 1 << 33  # 7.36
    CREATE_SUPP_GROUP = 1 << 34  # 7.38
    HAS_EXPIRE_ONLY = 1 << 35  # 7.38
    DIRECT_IO_ALLOW_MMAP = 1 << 36  # 7.39
    PASSTHROUGH = 1 << 37  # 7.40
    NO_EXPORT_SUPPORT = 1 << 38  # 7.40
    HAS_RESEND = 1 << 39  # 7.40
    ALLOW_IDMAP = 1 << 40  # 7.41
    OVER_IO_URING = 1 << 41  # 7.42
    REQUEST_TIMEOUT = 1 << 42  # 7.43


class OpenFlag(enum.IntFlag):
    """``fuse_open_out.open_flags`` (FOPEN_*)."""

    DIRECT_IO = 1 << 0  # 7.2
    KEEP_CACHE = 1 << 1  # 7.2
    NONSEEKABLE = 1 << 2  # 7.10
    CACHE_DIR = 1 << 3  # 7.28
    STREAM = 1 << 4  # 7.31
    NOFLUSH = 1 << 5  # 7.35
    PARALLEL_DIRECT_WRITES = 1 << 6  # 7.38
    PASSTHROUGH = 1 << 7  # 7.40


GETATTR_FH = 1 << 0
RELEASE_FLUSH = 1 << 0
READ_LOCKOWNER = 1 << 1

# -- headers ---------------------------------------------------------------------------------

#: fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen (7.38), padding
IN_HEADER = struct.Struct("<IIQQIIIHH")
#: fuse_out_header: len, error (negative errno or a Notify code), unique
OUT_HEADER = struct.Struct("<IiQ")

# -- request arguments -----------------------------------------------------------------------

#: fuse_init_in: major, minor, max_readahead, flags, flags2 (7.36), unused[11]
INIT_IN = struct.Struct("<IIIII44x")
INIT_IN_COMPAT = struct.Struct("<IIII")  # before 7.36
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count, dummy
FORGET_ONE = struct.Struct("<QQ")  # nodeid, nlookup
GETATTR_IN = struct.Struct("<IIQ")  # getattr_flags, dummy, fh (7.9)
OPEN_IN = struct.Struct("<II")  # flags, open_flags (7.33)
READ_IN = struct.Struct("<QQIIQII")  # fh, offset, size, read_flags, lock_owner, flags, padding
RELEASE_IN = struct.Struct("<QIIQ")  # fh, flags, release_flags, lock_owner
FLUSH_IN = struct.Struct("<QIIQ")  # fh, unused, padding, lock_owner
GETXATTR_IN = struct.Struct("<II")  # size, padding (then the name, NUL-terminated)
ACCESS_IN = struct.Struct("<II")  # mask, padding
INTERRUPT_IN = struct.Struct("<Q")  # unique of the interrupted request

# -- reply arguments -------------------------------------------------------------------------

#: fuse_attr: ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
#: mode, nlink, uid, gid, rdev, blksize, flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
#: fuse_entry_out: nodeid, generation, entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")
ENTRY_OUT_SIZE = ENTRY_OUT_HEAD.size + ATTR.size  # 128
#: fuse_attr_out: attr_valid, attr_valid_nsec, dummy
ATTR_OUT_HEAD = struct.Struct("<QII")
#: fuse_init_out: major, minor, max_readahead, flags, max_background, congestion_threshold,
#: max_write, time_gran (7.23), max_pages (7.28), map_alignment (7.31), flags2 (7.36),
#: max_stack_depth (7.40), request_timeout (7.43), unused[11]
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
#: fuse_open_out: fh, open_flags, backing_id (7.40)
OPEN_OUT = struct.Struct("<QIi")
#: fuse_kstatfs: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare[6]
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
GETXATTR_OUT = struct.Struct("<II")  # size, padding
#: fuse_dirent: ino, off, namelen, type (then the name, padded to 8 bytes)
DIRENT = struct.Struct("<QQII")
#: fuse_notify_store_out: nodeid, offset, size, padding
NOTIFY_STORE_OUT = struct.Struct("<QQII")
#: fuse_notify_inval_inode_out: ino, off, len
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")

# -- /dev/fuse ioctls ------------------------------------------------------------------------

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (229 << 8) | number  # FUSE_DEV_IOC_MAGIC = 229


#: fuse_backing_map: fd, flags, padding (7.40)
BACKING_MAP = struct.Struct("<iIQ")
DEV_IOC_CLONE = _ioc(_IOC_READ, 0, 4)
DEV_IOC_BACKING_OPEN = _ioc(_IOC_WRITE, 1, BACKING_MAP.size)  # 7.40
DEV_IOC_BACKING_CLOSE = _ioc(_IOC_WRITE, 2, 4)  # 7.40


def rec_align(n: int) -> int:
    """FUSE_REC_ALIGN: variable-length records are padded to 8 bytes."""
    return (n + 7) & ~7
