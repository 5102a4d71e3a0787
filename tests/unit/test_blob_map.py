"""``BlobMap``: the mapping READ replies are copied from (views, growth, a shrunken file)."""

from __future__ import annotations

import errno
import os

import pytest

from mxfs.fileio import BlobMap


def test_views_follow_the_file_as_it_grows(tmp_path) -> None:
    data = os.urandom(3 << 20)
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data[: 1 << 20], 0)
        blob = BlobMap(fd)
        with blob.view(4096 + 5, 1000) as v:
            assert bytes(v) == data[4101:5101]
        with pytest.raises(OSError, match="range ends at"):
            blob.view(0, 2 << 20)  # not written yet
        os.pwrite(fd, data[1 << 20:], 1 << 20)  # the blob grew: mapped again
        with blob.view((3 << 20) - 7, 7) as v:
            assert bytes(v) == data[-7:]
        held = blob.view(0, 4096)
        blob.forget(4096 + 5, 100)  # unmaps whole pages of this process only: the bytes stay readable
        with blob.view(4096, 4096) as v:
            assert bytes(v) == data[4096:8192]
    finally:
        os.close(fd)
    assert bytes(held) == data[:4096]  # a view outlives the owner's fd
    held.release()


def test_a_copy_past_a_shrunken_file_is_an_error_not_a_crash(tmp_path) -> None:
    """The kernel copies from the mapping inside ``writev``: pages past the file's end make
    that system call fail (EFAULT), they never raise SIGBUS in the daemon."""
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT, 0o600)
    r, w = os.pipe()
    try:
        os.pwrite(fd, os.urandom(1 << 20), 0)
        blob = BlobMap(fd)
        with blob.view(0, 1 << 20) as v:
            os.ftruncate(fd, 4096)
            with pytest.raises(OSError) as info:
                os.writev(w, [b"h", v[512 * 1024: 512 * 1024 + 4096]])
            assert info.value.errno == errno.EFAULT
    finally:
        for f in (fd, r, w):
            os.close(f)
