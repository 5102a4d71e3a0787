"""Failure handling with real processes: killed daemon, corrupt cache, vanished server, eviction."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxfs import nodectl
from mxfs.demo import wait_for
from mxfs.modelgen import ModelShape, generate_model
from mxfs_daemon import mountpoint as mounts
from tests.conftest import BLOCK_SIZE, MODEL, sha256_file


def _shards(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


def test_sigterm_unmounts_cleanly(start_server, start_mount):
    daemon = start_mount(start_server())
    assert mounts.is_mounted(daemon.mountpoint)
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log()[-2000:]
    assert not mounts.is_mounted(daemon.mountpoint)


@contextlib.contextmanager
def hung(server) -> Iterator[None]:
    """The server's process stopped (SIGSTOP): its sockets still accept, nothing ever answers."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def _blocked_on(tid: int, fd: int) -> bool:
    """Whether thread ``tid`` of this process sits in a system call on ``fd`` (/proc/.../syscall)."""
    try:
        fields = Path(f"/proc/self/task/{tid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 3 and fields[0] not in ("running", "-1") and int(fields[1], 16) == fd


def test_kill9_mid_read_then_restart_serves_correct_bytes(start_server, start_mount, origin_hashes):
    server = start_server()
    daemon = start_mount(server, extra=["--fetch-workers", "1", "--readahead-blocks", "0", "--fetch-timeout", "120"])
    big = _shards(daemon.mountpoint / MODEL)[0]
    outcome: dict[str, object] = {}
    fh = open(big, "rb", buffering=0)  # noqa: SIM115 - closed below, after the daemon died
    assert len(fh.read(4 * BLOCK_SIZE)) == 4 * BLOCK_SIZE  # the first blocks arrive
    fh.seek(big.stat().st_size - BLOCK_SIZE)  # far beyond any kernel readahead

    def reader() -> None:
        try:
            outcome["data"] = fh.read(BLOCK_SIZE)
        except OSError as exc:
            outcome["error"] = exc

    with hung(server):  # the next block cannot arrive: the read stays in flight until the kill
        t = threading.Thread(target=reader)
        t.start()
        wait_for(lambda: t.native_id is not None and _blocked_on(t.native_id, fh.fileno()), 20,
                 "the reader blocked in read(2) on the mount")
        daemon.stop(kill=True)
        t.join(timeout=30)
    with contextlib.suppress(OSError):  # the flush on close meets the dead connection
        fh.close()
    assert not t.is_alive()
    # the reader's one read(2), seen blocked in the kernel before the kill, failed with the daemon
    assert "data" not in outcome and outcome["error"].errno in (errno.ECONNABORTED, errno.ENOTCONN), outcome
    with pytest.raises(OSError) as info:
        os.stat(daemon.mountpoint / "never-looked-up")
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    daemon.start(wait_model=MODEL)  # same mountpoint and cache: stale mount recovered
    for rel, digest in origin_hashes.items():
        assert sha256_file(daemon.mountpoint / MODEL / rel) == digest, rel


def test_corrupt_cache_block_is_detected_and_refetched(start_server, start_mount, origin_hashes):
    server = start_server()
    daemon = start_mount(server)
    shard = _shards(daemon.mountpoint / MODEL)[0]
    sha = os.getxattr(shard, "user.mxfs.sha256").decode()
    assert sha256_file(shard) == origin_hashes[shard.name]
    backing = Path(os.getxattr(shard, "user.mxfs.backing").decode())
    daemon.stop()
    with open(backing, "r+b") as fh:  # flip bytes inside block 3
        fh.seek(3 * BLOCK_SIZE + 100)
        fh.write(b"\xff\x00" * 64)
    assert sha256_file(backing) != sha
    before = server.metric("mxfs_server_bytes_served_total")
    daemon.start(wait_model=MODEL)
    assert sha256_file(daemon.mountpoint / MODEL / shard.name) == origin_hashes[shard.name]
    refetched = server.metric("mxfs_server_bytes_served_total") - before
    assert refetched == BLOCK_SIZE  # exactly the corrupt block came back from the server
    assert sha256_file(backing) == sha
    assert "corrupt" in daemon.log()


def test_server_gone_cached_reads_work_uncached_fail_fast_then_recover(start_server, start_mount, origin_hashes):
    server = start_server()
    daemon = start_mount(server, extra=["--fetch-timeout", "3", "--readahead-blocks", "0"])
    model = daemon.mountpoint / MODEL
    shards = _shards(model)
    assert sha256_file(model / "config.json") == origin_hashes["config.json"]
    assert sha256_file(shards[0]) == origin_hashes[shards[0].name]
    server.stop()
    # cached: still readable (also after the daemon restarts without a server)
    daemon.stop()
    daemon.start(wait_model=MODEL)
    assert sha256_file(model / shards[0].name) == origin_hashes[shards[0].name]
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        (model / shards[-1].name).read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - start < 15
    server.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            assert sha256_file(model / shards[-1].name) == origin_hashes[shards[-1].name]
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_hung_server_cached_reads_work_uncached_fail_within_the_fetch_timeout(start_server, start_mount,
                                                                             origin_hashes):
    server = start_server()
    timeout_s = 3
    daemon = start_mount(server, extra=["--fetch-timeout", str(timeout_s), "--readahead-blocks", "0"])
    model = daemon.mountpoint / MODEL
    shards = _shards(model)
    assert sha256_file(shards[0]) == origin_hashes[shards[0].name]
    with hung(server):
        # cached: served from the node's cache (the kernel's copy dropped first), the server never asked
        with open(shards[0], "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert sha256_file(shards[0]) == origin_hashes[shards[0].name]
        # uncached: EIO once the fetch timeout has passed, not a reader stuck on the silent server
        start = time.monotonic()
        with pytest.raises(OSError) as info, open(shards[-1], "rb") as fh:
            fh.read(BLOCK_SIZE)
        elapsed = time.monotonic() - start
        assert info.value.errno == errno.EIO
        assert elapsed < timeout_s + 5, f"an uncached read took {elapsed:.1f}s with a {timeout_s}s fetch timeout"
    # the server answers again: the same read succeeds (bounded wait for any back-off to pass)
    wait_for(lambda: _reads(shards[-1]), 30, "reads after the server resumed")
    assert sha256_file(shards[-1]) == origin_hashes[shards[-1].name]


def _reads(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return len(fh.read(BLOCK_SIZE)) == BLOCK_SIZE
    except OSError:
        return False


def test_eviction_keeps_cache_under_bound(start_server, start_mount, origin_hashes):
    bound = 2 * 1024 * 1024
    daemon = start_mount(start_server(), extra=["--cache-size", str(bound)])
    for rel, digest in origin_hashes.items():
        assert sha256_file(daemon.mountpoint / MODEL / rel) == digest
    status = nodectl.status(daemon.mountpoint)
    assert 0 < status.cache_bytes <= bound
    assert status.cache_limit == bound
    blobs = daemon.cache_dir / "blocks" / "blobs"
    on_disk = sum(p.stat().st_blocks * 512 for p in blobs.rglob("*") if p.is_file())
    assert on_disk <= bound + 64 * 1024
    # evicted data is refetched correctly
    for rel, digest in origin_hashes.items():
        assert sha256_file(daemon.mountpoint / MODEL / rel) == digest


def test_prefetch_hydrates_whole_model(start_server, start_mount, origin_hashes):
    server = start_server()
    daemon = start_mount(server)
    model = daemon.mountpoint / MODEL
    out = subprocess.run([sys.executable, "-m", "mxfs", "prefetch", str(model), "--page-cache"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    status = nodectl.status(daemon.mountpoint)
    m = next(m for m in status.models if m.name == MODEL)
    assert m.cached_bytes == m.total_bytes > 0
    served = server.metric("mxfs_server_bytes_served_total")
    for rel, digest in origin_hashes.items():
        assert os.getxattr(model / rel, "user.mxfs.backing")
        assert sha256_file(model / rel) == digest
    assert server.metric("mxfs_server_bytes_served_total") == served  # all reads were local


def test_hostile_safetensors_and_bad_names_give_clear_errors(tmp_path, start_server, start_mount):
    origin = tmp_path / "hostile-origin"
    generate_model(origin / "good" / "model", ModelShape(hidden=64, intermediate=128, layers=1, heads=1,
                                                        kv_heads=1, vocab=64))
    bad = origin / "bad" / "model"
    bad.mkdir(parents=True)
    (bad / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    server = start_server(models_dir=origin)
    env = dict(os.environ, MODEL_EXPRESS_URL=server.address)
    run = lambda *a: subprocess.run([sys.executable, "-m", "mxfs", *a], capture_output=True, text=True,  # noqa: E731
                                    env=env, timeout=60)
    out = run("model", "files", "bad/model")
    assert out.returncode == 2 and "header length" in out.stderr, out.stderr
    out = run("model", "files", "../etc")
    assert out.returncode == 2 and "invalid" in out.stderr, out.stderr
    out = run("model", "files", "good/../../etc")
    assert out.returncode == 2 and "invalid" in out.stderr, out.stderr
    out = run("model", "files", "nobody/nothing")
    assert out.returncode == 2 and "not found" in out.stderr, out.stderr
    daemon = start_mount(server, wait_model="good/model")
    assert (daemon.mountpoint / "good" / "model" / "config.json").read_bytes()
    with pytest.raises(OSError) as info:
        os.stat(daemon.mountpoint / "bad" / "model")
    assert info.value.errno == errno.EIO
    assert shutil.which("fusermount3")


def test_manifest_asked_again_after_a_stalled_server_then_failing_clearly(start_server, tmp_path, caplog):
    """A server that stalls past the deadline is asked again (the lookup succeeds once it answers);
    one that never answers fails after the bounded attempts, with no stored manifest to fall back on."""
    import trio

    from mxfs.errors import BlockUnavailable
    from mxfs.fetch import resolver as resolver_mod
    from mxfs.fetch.resolver import ManifestResolver
    from mxfs.manifest.names import parse_model_ref
    from mxfs.rpc.client import MxfsClient

    server = start_server()
    ref = parse_model_ref(MODEL)
    retries = lambda: sum("asking again" in r.getMessage() for r in caplog.records)  # noqa: E731

    async def resolve_while_stalled(resume: bool) -> object:
        resolver = ManifestResolver(MxfsClient(server.address, timeout_s=1.0), tmp_path / f"state-{resume}",
                                    trio.CapacityLimiter(2))
        result: list[object] = []

        async def ask() -> None:
            try:
                result.append(await resolver.resolve(ref))
            except BlockUnavailable as exc:
                result.append(exc)

        with hung(server), trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                while resume and retries() == 0 and not result:
                    await trio.sleep(0.02)
                if resume:
                    os.kill(server.proc.pid, signal.SIGCONT)
        return result[0]

    caplog.set_level("WARNING", logger="mxfs.fetch.resolver")
    manifest = trio.run(resolve_while_stalled, True)
    assert getattr(manifest, "name", None) == MODEL, manifest
    assert retries() >= 1
    caplog.clear()
    failed = trio.run(resolve_while_stalled, False)
    assert isinstance(failed, BlockUnavailable), failed
    assert retries() == resolver_mod.MANIFEST_ATTEMPTS - 1
