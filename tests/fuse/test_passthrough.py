"""How open files are served: cached (through the chain), from the blob (a kernel copy) or by the
kernel itself (passthrough). Real server + daemon processes and real mounts; each test
runs with passthrough and with ``--no-passthrough`` (see conftest.py)."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mxfs import nodectl
from mxfs.demo import free_port
from tests.conftest import BLOCK_SIZE, MODEL, sha256_file

_SAMPLE = re.compile(r'^(\w+)\{(.*)\} ([0-9.e+-]+)$')


def scrape(port: int, name: str, **labels: str) -> float:
    """Sum of a daemon metric over the label sets that match ``labels``."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def daemon_reads(port: int, path: Path, mode: str | None = None) -> float:
    labels = {"file": f"{MODEL}/{path.name}"} | ({"mode": mode} if mode else {})
    return scrape(port, "mxfs_node_fuse_reads_total", **labels)


def complete_mode(mount_mode: str) -> str:
    """The mode a complete, verified file opens in."""
    return "passthrough" if mount_mode == "passthrough" else "blob"


def mode_of(path: Path) -> str:
    """The shared mode of the open files of ``path`` ('' when none is open)."""
    try:
        return os.getxattr(path, "user.mxfs.mode").decode()
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        return ""


def wait_released(path: Path, timeout: float = 10.0) -> None:
    """RELEASE reaches the daemon after close() returns: wait until it has."""
    deadline = time.monotonic() + timeout
    while mode_of(path):
        assert time.monotonic() < deadline, f"{path} still open in the daemon"
        time.sleep(0.02)


def read_all(fh) -> str:
    h = hashlib.sha256()
    fh.seek(0)
    while chunk := fh.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def hydrate(path: Path) -> None:
    """Read a whole file through the mount and wait until every block is on disk."""
    with open(path, "rb") as fh:
        while fh.read(1 << 20):
            pass
    assert os.getxattr(path, "user.mxfs.backing")  # waits for the pending cache writes
    wait_released(path)


@pytest.fixture
def node(start_server, start_mount, mount_mode):
    """A server + daemon with metrics; passthrough must really be granted in that mode."""
    port = free_port()
    server = start_server()
    daemon = start_mount(server, extra=["--metrics-port", str(port)])
    granted = os.getxattr(daemon.mountpoint, "user.mxfs.passthrough").decode()
    assert granted == ("on" if mount_mode == "passthrough" else "off")
    daemon.metrics_port = port
    daemon.server_proc = server
    return daemon


def shards(daemon) -> list[Path]:
    return sorted((daemon.mountpoint / MODEL).glob("*.safetensors"))


def test_complete_file_is_read_without_the_daemon(node, origin_hashes, mount_mode):
    shard = shards(node)[0]
    assert sha256_file(shard) == origin_hashes[shard.name]  # cold: through the chain
    cached = daemon_reads(node.metrics_port, shard, "cached")
    assert cached > 0
    hydrate(shard)
    before = daemon_reads(node.metrics_port, shard)
    with open(shard, "rb") as fh:
        assert mode_of(shard) == complete_mode(mount_mode)
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # not from the FUSE page cache
        assert read_all(fh) == origin_hashes[shard.name]
    assert daemon_reads(node.metrics_port, shard, "cached") == cached  # no byte through the chain
    if mount_mode == "passthrough":
        assert daemon_reads(node.metrics_port, shard) == before  # the daemon answered no read at all
    else:
        assert daemon_reads(node.metrics_port, shard, "blob") > 0
    assert scrape(node.metrics_port, "mxfs_node_fuse_opens_total", mode=complete_mode(mount_mode)) >= 1


def test_opened_incomplete_then_completed_then_reopened(node, origin_hashes, mount_mode):
    shard = shards(node)[1]
    digest = origin_hashes[shard.name]
    first = open(shard, "rb")  # noqa: SIM115 - held open across the steps below
    try:
        assert len(first.read(BLOCK_SIZE)) == BLOCK_SIZE
        assert mode_of(shard) == "cached"
        with open(shard, "rb") as second:  # completes the file while the first stays open
            assert read_all(second) == digest
        assert os.getxattr(shard, "user.mxfs.backing")
        with open(shard, "rb") as third:  # complete now, but the inode is still in cached mode
            assert mode_of(shard) == "cached"
            assert read_all(third) == digest
        assert read_all(first) == digest
    finally:
        first.close()
    wait_released(shard)
    cached = daemon_reads(node.metrics_port, shard, "cached")
    with open(shard, "rb") as again:  # the next open after completion
        assert mode_of(shard) == complete_mode(mount_mode)
        assert read_all(again) == digest
    assert daemon_reads(node.metrics_port, shard, "cached") == cached


def test_mmap_in_both_modes(node, origin_hashes, mount_mode):
    shard = shards(node)[2]
    digest = origin_hashes[shard.name]
    with open(shard, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mode_of(shard) == "cached"
        assert hashlib.sha256(mm).hexdigest() == digest
    hydrate(shard)
    before = daemon_reads(node.metrics_port, shard)
    with open(shard, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mode_of(shard) == complete_mode(mount_mode)
        assert hashlib.sha256(mm).hexdigest() == digest
        assert mm[BLOCK_SIZE + 7 : BLOCK_SIZE + 4096] == (node.server_proc.models_dir / MODEL / shard.name
                                                         ).read_bytes()[BLOCK_SIZE + 7 : BLOCK_SIZE + 4096]
    if mount_mode == "passthrough":
        assert daemon_reads(node.metrics_port, shard) == before


def test_sixteen_readers_across_modes(node, origin_hashes, mount_mode):
    model = node.mountpoint / MODEL
    files = sorted(origin_hashes)
    hydrate(shards(node)[0])  # one complete file; the others are still cold

    def read(i: int) -> tuple[str, str]:
        rel = files[i % len(files)]
        with open(model / rel, "rb") as fh:
            if i % 2 and (model / rel).stat().st_size:
                with mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
                    return rel, hashlib.sha256(mm).hexdigest()
            return rel, read_all(fh)

    for _ in range(2):  # the second round finds more files complete
        with ThreadPoolExecutor(16) as pool:
            for rel, digest in pool.map(read, range(16)):
                assert digest == origin_hashes[rel], rel
    port = node.metrics_port
    assert scrape(port, "mxfs_node_fuse_opens_total", mode="cached") > 0
    assert scrape(port, "mxfs_node_fuse_opens_total", mode=complete_mode(mount_mode)) > 0


def test_eviction_never_punches_an_open_blob(start_server, start_mount, origin_hashes, mount_mode):
    port = free_port()
    bound = 12 * 1024 * 1024  # one ~8 MiB shard plus a few blocks
    daemon = start_mount(start_server(), extra=["--cache-size", str(bound), "--metrics-port", str(port)])
    model = daemon.mountpoint / MODEL
    pinned, *others = sorted(model.glob("*.safetensors"))
    hydrate(pinned)
    blob = Path(os.getxattr(pinned, "user.mxfs.backing").decode())
    with open(pinned, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mode_of(pinned) == complete_mode(mount_mode)
        for other in others * 2:  # needs far more room than the bound leaves
            assert sha256_file(other) == origin_hashes[other.name]
        assert nodectl.status(daemon.mountpoint).cache_bytes <= bound
        assert blob.stat().st_blocks * 512 >= blob.stat().st_size  # no hole was punched
        with open(blob, "rb") as raw:  # make the next reads go to the disk
            os.posix_fadvise(raw.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert read_all(fh) == origin_hashes[pinned.name]
        assert hashlib.sha256(mm).hexdigest() == origin_hashes[pinned.name]
    wait_released(pinned)
    for other in others:  # unpinned now: it may be evicted like any other file
        assert sha256_file(other) == origin_hashes[other.name]
    assert nodectl.status(daemon.mountpoint).cache_bytes <= bound


def test_kill9_with_open_passthrough_file_then_restart(start_server, start_mount, origin_hashes,
                                                       mount_mode, passthrough):
    """What readers see: a passthrough file open (and mapped) before the daemon dies keeps
    reading the right bytes (the kernel reads the blob, the daemon is not involved); a new
    daemon on the same mountpoint and cache serves new opens; the old handle keeps working."""
    daemon = start_mount(start_server())
    shard = sorted((daemon.mountpoint / MODEL).glob("*.safetensors"))[0]
    digest = origin_hashes[shard.name]
    hydrate(shard)
    fh = open(shard, "rb")  # noqa: SIM115 - must outlive the daemon
    mm = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    try:
        assert mode_of(shard) == "passthrough"
        daemon.stop(kill=True)
        assert read_all(fh) == digest
        assert hashlib.sha256(mm).hexdigest() == digest
        with pytest.raises(OSError) as info:
            os.stat(daemon.mountpoint / "never-looked-up")
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        daemon.start(wait_model=MODEL)  # same mountpoint and cache: the dead mount is detached
        with open(shard, "rb") as fresh:
            assert mode_of(shard) == "passthrough"
            assert read_all(fresh) == digest
        assert read_all(fh) == digest  # the old handle still reads the blob
        assert hashlib.sha256(mm).hexdigest() == digest
    finally:
        mm.close()
        fh.close()


def test_kill9_with_open_file_without_passthrough(start_server, start_mount, origin_hashes, mount_mode):
    """Without passthrough every read needs the daemon: an open handle fails once it died."""
    if mount_mode == "passthrough":
        pytest.skip("the passthrough case is test_kill9_with_open_passthrough_file_then_restart")
    daemon = start_mount(start_server())
    shard = sorted((daemon.mountpoint / MODEL).glob("*.safetensors"))[0]
    hydrate(shard)
    with open(shard, "rb") as fh:
        daemon.stop(kill=True)
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with pytest.raises(OSError) as info:
            read_all(fh)
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
    daemon.start(wait_model=MODEL)
    assert sha256_file(daemon.mountpoint / MODEL / shard.name) == origin_hashes[shard.name]


def test_corrupt_cached_block_is_never_served(node, origin_hashes, mount_mode):
    shard = shards(node)[0]
    digest = origin_hashes[shard.name]
    hydrate(shard)
    blob = Path(os.getxattr(shard, "user.mxfs.backing").decode())
    node.stop()
    with open(blob, "r+b") as fh:  # flip bytes inside block 3
        fh.seek(3 * BLOCK_SIZE + 100)
        fh.write(b"\xff\x00" * 64)
    served = node.server_proc.metric("mxfs_server_bytes_served_total")
    node.start(wait_model=MODEL)
    with open(shard, "rb") as fh:
        assert mode_of(shard) == "cached"  # the check before a blob open found the bad block
        assert read_all(fh) == digest
    assert node.server_proc.metric("mxfs_server_bytes_served_total") - served == BLOCK_SIZE
    assert "failed verification" in node.log()
    assert sha256_file(blob) == digest  # repaired in place
    wait_released(shard)
    with open(shard, "rb") as fh:
        assert mode_of(shard) == complete_mode(mount_mode)
        assert read_all(fh) == digest


def unlabelled(port: int, name: str) -> float:
    """A daemon metric without labels (0 when absent)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next((float(line.split()[1]) for line in body.splitlines() if line.startswith(f"{name} ")), 0.0)


def test_complete_blob_reopens_on_its_seal_without_a_full_check(node, origin_hashes, mount_mode):
    """Once checked (or hydrated from verified blocks) a complete blob is sealed: after a
    restart it opens from the blob without being read again. A write to the blob breaks the
    seal (test_corrupt_cached_block_is_never_served)."""
    shard = shards(node)[2]
    digest = origin_hashes[shard.name]
    hydrate(shard)
    with open(shard, "rb") as fh:  # first open: checked in full (no seal yet), then sealed
        assert mode_of(shard) == complete_mode(mount_mode)
    wait_released(shard)
    checked = unlabelled(node.metrics_port, "mxfs_node_fuse_verified_files_total")
    assert checked + unlabelled(node.metrics_port, "mxfs_node_fuse_sealed_files_total") == 1
    node.stop()
    node.start(wait_model=MODEL)
    with open(shard, "rb") as fh:
        assert mode_of(shard) == complete_mode(mount_mode)
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert read_all(fh) == digest
    assert unlabelled(node.metrics_port, "mxfs_node_fuse_sealed_files_total") == 1
    assert unlabelled(node.metrics_port, "mxfs_node_fuse_verified_files_total") == 0


def test_hydrated_model_opens_from_its_blobs(node, origin_hashes, mount_mode):
    """``mxfs prefetch --wait`` (the hydration engine) completes every file: the next opens
    are served from the blobs, and with passthrough no read reaches the daemon."""
    model = node.mountpoint / MODEL
    out = subprocess.run([sys.executable, "-m", "mxfs", "prefetch", str(model), "--wait", "--no-progress"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    for shard in shards(node):
        before = daemon_reads(node.metrics_port, shard)
        with open(shard, "rb") as fh:
            assert mode_of(shard) == complete_mode(mount_mode)
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert read_all(fh) == origin_hashes[shard.name]
        assert daemon_reads(node.metrics_port, shard, "cached") == 0
        if mount_mode == "passthrough":
            assert daemon_reads(node.metrics_port, shard) == before == 0


def test_verified_blocks_of_an_incomplete_file_are_answered_from_the_blob(start_server, start_mount, origin_hashes,
                                                                           mount_mode):
    """Blocks this daemon verified (here: a first read of half the file, no readahead so the
    file stays incomplete) are answered from the blob, not copied through Python; the rest
    through the chain, in the same cached-mode open."""
    port = free_port()
    daemon = start_mount(start_server(), extra=["--metrics-port", str(port), "--readahead-blocks", "0"])
    shard = shards(daemon)[1]
    size = shard.stat().st_size
    half = size // 2 // BLOCK_SIZE * BLOCK_SIZE
    with open(shard, "rb") as fh:
        assert len(fh.read(half)) == half
    os.listxattr(shard)  # waits for the daemon's pending cache writes
    wait_released(shard)
    before = unlabelled(port, "mxfs_node_fuse_blob_read_bytes_total")
    with open(shard, "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # not from the FUSE page cache
        assert mode_of(shard) == "cached"
        assert read_all(fh) == origin_hashes[shard.name]
    spliced = unlabelled(port, "mxfs_node_fuse_blob_read_bytes_total") - before
    assert half <= spliced < size  # the verified half came from the blob, the rest did not


def test_cold_sequential_read_ends_complete_and_reads_from_the_blob(node, origin_hashes, mount_mode):
    """A cold front-to-back read hands the file to hydration; reads of blocks hydration put
    in place are answered from the blob, and the next open is served whole from it."""
    shard = shards(node)[2]
    before = unlabelled(node.metrics_port, "mxfs_node_fuse_blob_read_bytes_total")
    with open(shard, "rb") as fh:
        assert read_all(fh) == origin_hashes[shard.name]
    assert unlabelled(node.metrics_port, "mxfs_node_fuse_blob_read_bytes_total") > before
    deadline = time.monotonic() + 30
    while "user.mxfs.backing" not in os.listxattr(shard):
        assert time.monotonic() < deadline, "hydration after a sequential read never completed"
        time.sleep(0.05)
    wait_released(shard)
    with open(shard, "rb") as fh:
        assert mode_of(shard) == complete_mode(mount_mode)
        assert read_all(fh) == origin_hashes[shard.name]
