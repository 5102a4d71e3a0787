"""Real server + FUSE mount over remote origins: the tree first, lazy verified blocks, exact bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxfs.manifest.builder import read_tensors
from tests.conftest import BLOCK_SIZE, MODEL, sha256_file

HF_NAME = "hf-org/tiny-llama"


def _check_lazy_then_exact(daemon, server, model: str, origin_dir: Path, origin_hashes: dict[str, str]) -> None:
    root = daemon.mountpoint / model
    listing = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    assert listing == {rel: (origin_dir / rel).stat().st_size for rel in origin_hashes}
    assert server.metric("mxfs_server_bytes_served_total") == 0  # tree shown, no weight byte moved

    shard = sorted(p for p in listing if p.endswith(".safetensors"))[0]
    tensor = read_tensors(origin_dir / shard, listing[shard])[3]
    with open(root / shard, "rb", buffering=0) as fh:
        fh.seek(tensor.begin)
        got = fh.read(tensor.nbytes)
    with open(origin_dir / shard, "rb") as fh:
        fh.seek(tensor.begin)
        assert got == fh.read(tensor.nbytes)
    blocks = tensor.end // BLOCK_SIZE - tensor.begin // BLOCK_SIZE + (1 if tensor.end % BLOCK_SIZE else 0)
    assert server.metric("mxfs_server_blocks_served_total") <= blocks  # only the tensor's blocks
    for rel, digest in origin_hashes.items():
        assert sha256_file(root / rel) == digest, rel


@pytest.mark.fuse
def test_hf_model_mounts_lazily_and_reads_back_exactly(hub, server_env, start_server, start_mount, models_dir,
                                                        origin_hashes, tmp_path):
    hub.add_dir(HF_NAME, models_dir / MODEL)
    server_env(origins="hf")
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    daemon = start_mount(server, wait_model=HF_NAME, extra=["--readahead-blocks", "0"])
    _check_lazy_then_exact(daemon, server, HF_NAME, models_dir / MODEL, origin_hashes)
    assert sum(hub.bytes_sent.values()) == sum((models_dir / MODEL / r).stat().st_size for r in origin_hashes)


@pytest.mark.fuse
def test_s3_model_mounts_lazily_and_reads_back_exactly(s3_env, s3_model, server_env, start_server, start_mount,
                                                        models_dir, origin_hashes, tmp_path):
    server_env(origins=s3_model)
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    daemon = start_mount(server, wait_model=MODEL, extra=["--readahead-blocks", "0"])
    _check_lazy_then_exact(daemon, server, MODEL, models_dir / MODEL, origin_hashes)
