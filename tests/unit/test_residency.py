"""Page-cache residency (``cachestat``), which decides whether a reply from a blob runs inline."""

from __future__ import annotations

import os

import pytest

from mxfs.fuse.kernel import residency


def test_resident_follows_the_page_cache(tmp_path):
    if residency._SYS_CACHESTAT is None:
        pytest.skip("no cachestat number for this architecture")
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: really dropped
        cached, _ = residency.resident(fd, 0, 1 << 20)
        if residency._available is False:
            pytest.skip("kernel without cachestat (before 6.5): blob replies always go to a worker thread")
        assert not cached
        os.pread(fd, 1 << 20, 0)
        assert residency.resident(fd, 0, 1 << 20) == (True, True)
        assert residency.resident(fd, 4096 + 1, 100) == (True, True)
    finally:
        os.close(fd)
    with open(path, "r+b") as fh:  # a dirty page is cached but not clean
        fh.write(b"x")
        fh.flush()
        assert residency.resident(fh.fileno(), 0, 4096) == (True, False)
    assert residency.resident(-1, 0, 4096) == (False, False)  # a bad fd: not known, not inline
