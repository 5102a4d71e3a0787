"""A node with its own credentials reads blocks straight from the origin (a tier of its chain);
the server only hands out the manifest."""

from __future__ import annotations

import pytest

from mxfs import nodectl
from tests.conftest import MODEL, sha256_file


@pytest.mark.fuse
def test_node_reads_blocks_from_s3_directly(s3_env, s3_model, server_env, start_server, start_mount,
                                            origin_hashes, tmp_path):
    server_env(origins=s3_model, origin_mode="hydrate")
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    daemon = start_mount(server, wait_model=MODEL, extra=["--origin-direct", s3_model])
    for rel, digest in origin_hashes.items():
        assert sha256_file(daemon.mountpoint / MODEL / rel) == digest, rel
    status = nodectl.status(daemon.mountpoint)
    total = sum((daemon.mountpoint / MODEL / rel).stat().st_size for rel in origin_hashes)
    assert status.bytes_by_tier["origin"] == total
    assert status.bytes_by_tier.get("server", 0) == 0
    assert server.metric("mxfs_server_bytes_served_total") == 0


@pytest.mark.fuse
def test_unreachable_direct_origin_falls_back_to_the_server(s3_env, s3_model, server_env, start_server,
                                                            start_mount, origin_hashes, tmp_path):
    server_env(origins=s3_model, origin_mode="hydrate")
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    # a different bucket than the server's: the tier never serves this manifest
    daemon = start_mount(server, wait_model=MODEL, extra=["--origin-direct", "s3://other/zoo"])
    for rel, digest in origin_hashes.items():
        assert sha256_file(daemon.mountpoint / MODEL / rel) == digest, rel
    assert nodectl.status(daemon.mountpoint).bytes_by_tier.get("origin", 0) == 0
