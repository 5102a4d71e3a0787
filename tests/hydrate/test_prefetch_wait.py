"""``mxfs prefetch --wait`` through a real mount and a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mxfs import nodectl
from tests.conftest import MODEL, sha256_file


def _prefetch(model, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MXFS_LOG_FORMAT="json")
    return subprocess.run([sys.executable, "-m", "mxfs", "prefetch", str(model), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_prefetch_wait_hydrates_every_file_complete(start_server, start_mount, origin_hashes):
    server = start_server()
    daemon = start_mount(server)
    model = daemon.mountpoint / MODEL
    out = _prefetch(model, "--wait")
    assert out.returncode == 0, out.stderr + daemon.log()[-3000:]
    assert "complete" in out.stdout
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    progress = [d for d in lines if "done_bytes" in d]
    assert progress and progress[-1]["done_bytes"] == progress[-1]["total_bytes"] > 0
    assert {"rate_bytes_s", "eta_s", "model"} <= set(progress[-1])
    m = next(m for m in nodectl.status(daemon.mountpoint).models if m.name == MODEL)
    assert m.complete_files == m.files == len(origin_hashes) and m.cached_bytes == m.total_bytes
    served = server.metric("mxfs_server_bytes_served_total")
    for rel, digest in origin_hashes.items():
        assert sha256_file(model / rel) == digest
    assert server.metric("mxfs_server_bytes_served_total") == served  # every read was local
    assert _prefetch(model, "--wait").returncode == 0  # already complete: nothing to do, still success


def test_prefetch_wait_fails_when_the_server_vanishes(start_server, start_mount):
    server = start_server()
    daemon = start_mount(server)
    server.stop(kill=True)
    out = _prefetch(daemon.mountpoint / MODEL, "--wait")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not hydrated" in out.stderr or "not every file" in out.stderr
    m = next(m for m in nodectl.status(daemon.mountpoint).models if m.name == MODEL)
    assert m.complete_files < m.files


def test_a_sequential_reader_leaves_its_file_complete(start_server, start_mount, origin_hashes):
    daemon = start_mount(start_server(), extra=["--readahead-blocks", "4"])
    model = daemon.mountpoint / MODEL
    shard = max((p for p in origin_hashes if p.endswith(".safetensors")), key=lambda p: (model / p).stat().st_size)
    with open(model / shard, "rb", buffering=0) as fh:  # read only the first part, in order
        for _ in range(12):
            assert fh.read(256 * 1024)

    def complete() -> bool:
        m = next(m for m in nodectl.status(daemon.mountpoint).models if m.name == MODEL)
        return m.complete_files - empty >= 1 and "user.mxfs.backing" in os.listxattr(model / shard)

    empty = sum(1 for p in origin_hashes if (model / p).stat().st_size == 0)

    from mxfs.demo import wait_for

    wait_for(complete, 60, "the sequentially read file to be hydrated")
    assert sha256_file(model / shard) == origin_hashes[shard]
