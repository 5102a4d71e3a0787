"""A snapshot whose every file is lazy (no small file hydrated with the manifest)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import MODEL, sha256_file
from tests.origins.conftest import BUCKET


@pytest.mark.fuse
def test_model_of_only_lazy_files_mounts_and_reads(s3_env, server_env, start_server, start_mount, models_dir,
                                                   tmp_path):
    shard = sorted((models_dir / MODEL).glob("*.safetensors"))[0]
    only = tmp_path / "only-weights"
    only.mkdir()
    shutil.copy(shard, only / shard.name)
    s3_env.upload_dir(BUCKET, "lazy-only/solo/weights", only)
    server_env(origins=f"s3://{BUCKET}/lazy-only", origin_eager_bytes=64 * 1024)
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    daemon = start_mount(server, wait_model="solo/weights")
    assert sha256_file(daemon.mountpoint / "solo" / "weights" / shard.name) == sha256_file(shard)
