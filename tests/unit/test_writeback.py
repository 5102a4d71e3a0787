"""Early writeback of hydrated blocks (``sync_file_range``): dirty pages leave for the disk
without waiting for the flusher, so the fsync that completes a file has little to write."""

from __future__ import annotations

import os

import pytest

from mxfs.cache.writeback import start_writeback
from mxfs.demo import wait_for
from mxfs.fuse.kernel import residency


def test_started_writeback_cleans_the_range(tmp_path) -> None:
    if residency._SYS_CACHESTAT is None:
        pytest.skip("no cachestat number for this architecture")
    size = 8 << 20
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, os.urandom(size), 0)
        cached, clean = residency.resident(fd, 0, size)
        if residency._available is False:
            pytest.skip("kernel without cachestat (before 6.5)")
        if not cached or clean:
            pytest.skip("this file system keeps no dirty page cache to write back (e.g. tmpfs)")
        # the flusher leaves pages this young alone for dirty_expire_centisecs (30 s by default)
        assert start_writeback(fd, 0, size)
        wait_for(lambda: residency.resident(fd, 0, size) == (True, True), 20, "written back, still cached")
        assert os.pread(fd, 16, 0) and start_writeback(fd, 0, 0) is False
    finally:
        os.close(fd)
    assert start_writeback(-1, 0, 4096) is False  # a bad fd is no error here: the final fsync reports
