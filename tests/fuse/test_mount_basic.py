"""A real server process + a real FUSE mount: tree, bytes, mmap, xattrs, laziness."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from mxfs.manifest.names import hub_folder
from tests.conftest import BLOCK_SIZE, MODEL, sha256_file
from tests.support.needs import need_fuse


def test_tree_appears_without_moving_weight_bytes(mxfs_mount, origin_hashes):
    listing = {p.relative_to(mxfs_mount.model_dir).as_posix(): p.stat().st_size
               for p in mxfs_mount.model_dir.rglob("*") if p.is_file()}
    assert set(listing) == set(origin_hashes)
    for rel, size in listing.items():
        assert size == (mxfs_mount.origin_dir / rel).stat().st_size
    subprocess.run(["ls", "-lR", str(mxfs_mount.mountpoint)], check=True, capture_output=True, timeout=30)
    assert mxfs_mount.server.metric("mxfs_server_bytes_served_total") == 0


def test_every_file_reads_back_with_origin_sha256(mxfs_mount, origin_hashes):
    for rel, digest in origin_hashes.items():
        assert sha256_file(mxfs_mount.model_dir / rel) == digest, rel


def test_mmap_reads_match_origin(mxfs_mount, origin_hashes):
    shard = next(p for p in sorted(origin_hashes) if p.endswith(".safetensors"))
    with open(mxfs_mount.model_dir / shard, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        import hashlib

        assert hashlib.sha256(mm).hexdigest() == origin_hashes[shard]


def test_one_tensor_moves_only_its_blocks(mxfs_mount):
    from safetensors import safe_open

    shard = sorted(mxfs_mount.model_dir.glob("*.safetensors"))[1]
    manifest_size = shard.stat().st_size
    with safe_open(str(mxfs_mount.origin_dir / shard.name), "np") as f:
        name = next(k for k in f.keys() if "mlp.up_proj" in k)  # noqa: SIM118 - safe_open is not iterable
        want = f.get_tensor(name)
    before_bytes = mxfs_mount.server.metric("mxfs_server_bytes_served_total")
    with safe_open(str(shard), "np") as f:
        got = f.get_tensor(name)
    assert (got == want).all()
    moved = mxfs_mount.server.metric("mxfs_server_bytes_served_total") - before_bytes
    # header block + the tensor's blocks + bounded readahead (kernel 1 MiB, and the daemon's
    # window, which grows while a reader waits: more on loaded cores), far less than the file
    tensor_blocks = want.nbytes // BLOCK_SIZE + 2
    assert 0 < moved <= (tensor_blocks + 1 + 12) * BLOCK_SIZE
    assert moved < manifest_size / 2


def test_hf_cache_layout(mxfs_mount, origin_hashes):
    hub = mxfs_mount.mountpoint / "hub" / hub_folder(MODEL)
    revision = (hub / "refs" / "main").read_text()
    assert len(revision) == 40
    snap = hub / "snapshots" / revision
    assert sha256_file(snap / "config.json") == origin_hashes["config.json"]
    assert os.getxattr(snap / "config.json", "user.mxfs.revision").decode() == revision


def test_hf_offline_loaders(mxfs_mount):
    code = f"""
import os, sys
os.environ["HF_HUB_CACHE"] = {str(mxfs_mount.mountpoint / 'hub')!r}
os.environ["HF_HUB_OFFLINE"] = "1"
from huggingface_hub import snapshot_download, hf_hub_download
path = snapshot_download({MODEL!r})
assert os.path.exists(os.path.join(path, "config.json")), path
cfg = hf_hub_download({MODEL!r}, "config.json")
from transformers import AutoConfig, AutoTokenizer
c = AutoConfig.from_pretrained({MODEL!r})
assert c.model_type == "llama", c
tok = AutoTokenizer.from_pretrained({MODEL!r})
assert tok("w1 w2")["input_ids"], tok
from safetensors import safe_open
import glob
for shard in glob.glob(os.path.join(path, "*.safetensors")):
    with safe_open(shard, "np") as f:
        for k in list(f.keys())[:3]:
            f.get_tensor(k)
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_xattrs_tell_a_loader_about_backing_files(mxfs_mount, origin_hashes):
    cfg = mxfs_mount.model_dir / "config.json"
    names = os.listxattr(cfg)
    assert "user.mxfs.model" in names
    assert os.getxattr(cfg, "user.mxfs.model").decode() == MODEL
    assert os.getxattr(cfg, "user.mxfs.sha256").decode() == origin_hashes["config.json"]
    cfg.read_bytes()
    backing = os.getxattr(cfg, "user.mxfs.backing").decode()
    assert sha256_file(backing) == origin_hashes["config.json"]
    assert os.getxattr(mxfs_mount.mountpoint, "user.mxfs.control")


def test_sixteen_concurrent_readers(mxfs_mount, origin_hashes):
    files = sorted(origin_hashes)

    def read(i: int) -> tuple[str, str]:
        rel = files[i % len(files)]
        return rel, sha256_file(mxfs_mount.model_dir / rel)

    with ThreadPoolExecutor(16) as pool:
        for rel, digest in pool.map(read, range(16)):
            assert digest == origin_hashes[rel]


def test_read_only(mxfs_mount):
    with pytest.raises(OSError) as info:
        os.open(mxfs_mount.model_dir / "config.json", os.O_RDWR)
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        (mxfs_mount.model_dir / "new.txt").write_text("x")
    assert info.value.errno == errno.EROFS


def test_unknown_and_hostile_names(mxfs_mount):
    mnt = mxfs_mount.mountpoint
    assert not (mnt / "test-org" / "no-such-model").exists()
    assert not (mnt / "hub" / "models--test-org--nope").exists()
    assert not (mnt / ".." / "etc").resolve().is_relative_to(mnt)
    for bad in ("a--b", "..x", "-x"):
        assert not (mnt / "test-org" / bad).exists()


def test_demo_command_end_to_end(tmp_path):
    need_fuse()
    out = subprocess.run([sys.executable, "-m", "mxfs", "demo", "--dir", str(tmp_path / "demo"), "--size", "16MiB",
                          "--check"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every file read through the mount matches the origin" in out.stdout
