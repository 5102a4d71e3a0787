"""A node daemon whose cache disk or index fails keeps serving reads, uncached, and says why."""

from __future__ import annotations

import os
from pathlib import Path

from mxfs import nodectl
from mxfs.demo import free_port, wait_for
from tests.conftest import MODEL, sha256_file
from tests.support.cluster import scrape_metric
from tests.support.disks import fill, small_tmpfs


def _read_all_equal(model_dir: Path, origin_hashes: dict[str, str]) -> None:
    for rel, digest in origin_hashes.items():
        assert sha256_file(model_dir / rel) == digest, rel


def test_full_disk_cache_keeps_serving_reads(start_server, start_mount, tmp_path, origin_hashes):
    server = start_server()
    port = free_port()
    with small_tmpfs(tmp_path / "node" / "cache", "8m") as cache:
        daemon = start_mount(server, wait_model=None,
                             extra=["--metrics-port", str(port), "--cache-size", "1GiB"])
        try:
            fill(cache / "filler")  # the disk is full before the model is first asked for
            _read_all_equal(daemon.mountpoint / MODEL, origin_hashes)
            assert daemon.proc.poll() is None
            assert scrape_metric(port, "mxfs_node_cache_errors_total", op="write", reason="ENOSPC") > 0
            assert scrape_metric(port, "mxfs_node_cache_errors_total", op="manifest", reason="ENOSPC") == 1
            assert scrape_metric(port, "mxfs_node_cache_degraded", reason="ENOSPC") == 1
            assert "cache write failed (ENOSPC)" in daemon.log()
            assert nodectl.status(daemon.mountpoint).cache_bytes == 0
        finally:
            daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log()[-2000:]


def test_tiny_index_map_keeps_serving_reads(start_server, start_mount, origin_hashes):
    port = free_port()
    daemon = start_mount(start_server(), extra=["--metrics-port", str(port), "--cache-index-size", "64KiB"])
    _read_all_equal(daemon.mountpoint / MODEL, origin_hashes)
    wait_for(lambda: scrape_metric(port, "mxfs_node_cache_errors_total", op="write", reason="map_full") > 0,
             20, "map_full to be counted")
    assert scrape_metric(port, "mxfs_node_cache_degraded", reason="map_full") == 1
    assert scrape_metric(port, "mxfs_node_background_failures_total") == 0
    assert daemon.proc.poll() is None
    status = nodectl.status(daemon.mountpoint)
    assert 0 < status.cache_bytes < sum((daemon.mountpoint / MODEL / r).stat().st_size for r in origin_hashes)
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log()[-2000:]


def test_unreadable_cache_file_is_refetched(start_server, start_mount, origin_hashes):
    server = start_server()
    port = free_port()
    daemon = start_mount(server, extra=["--metrics-port", str(port)])
    shard = next(r for r in sorted(origin_hashes) if r.endswith(".safetensors"))
    assert sha256_file(daemon.mountpoint / MODEL / shard) == origin_hashes[shard]
    blob = Path(os.getxattr(daemon.mountpoint / MODEL / shard, "user.mxfs.backing").decode())
    daemon.stop()
    blob.unlink()
    blob.mkdir()  # the cache file cannot be opened (EISDIR), as a broken one fails with EIO
    daemon.start(wait_model=MODEL)
    served = server.metric("mxfs_server_bytes_served_total")
    assert sha256_file(daemon.mountpoint / MODEL / shard) == origin_hashes[shard]
    assert server.metric("mxfs_server_bytes_served_total") > served  # fetched again, not failed
    assert scrape_metric(port, "mxfs_node_cache_errors_total", op="read", reason="EISDIR") > 0
    assert daemon.proc.poll() is None


def test_default_cache_size_does_not_shrink_on_restart(start_server, start_mount, tmp_path, origin_hashes):
    server = start_server()
    with small_tmpfs(tmp_path / "node" / "cache", "64m"):
        daemon = start_mount(server)
        try:
            first = nodectl.status(daemon.mountpoint)
            _read_all_equal(daemon.mountpoint / MODEL, origin_hashes)
            os.listxattr(daemon.mountpoint / MODEL / sorted(origin_hashes)[0])  # waits for cache writes
            warm = nodectl.status(daemon.mountpoint)
            assert warm.cache_bytes >= 20 << 20
            daemon.stop()
            daemon.start(wait_model=MODEL)
            again = nodectl.status(daemon.mountpoint)
        finally:
            daemon.stop()
    assert again.cache_bytes == warm.cache_bytes  # nothing evicted by a smaller bound
    assert again.cache_limit >= first.cache_limit - (1 << 20), (first.cache_limit, again.cache_limit)
    assert again.cache_limit <= 64 << 20
