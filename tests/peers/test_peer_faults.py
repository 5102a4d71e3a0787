"""Faults with real processes: a peer killed mid-transfer, a peer serving corrupt bytes."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

from mxfs.demo import wait_for
from mxfs.fetch.hydrate import DEFAULT_CONCURRENCY, EXPEDITED
from tests.conftest import MODEL
from tests.peers.conftest import node_id_of, read_all


def slow_read(model_dir: Path, out: dict, pause_s: float = 0.02) -> None:
    """Read every file in 256 KiB steps with short pauses (keeps a transfer in progress)."""
    try:
        for p in sorted(model_dir.rglob("*")):
            if p.is_file():
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    while chunk := fh.read(256 * 1024):
                        h.update(chunk)
                        time.sleep(pause_s)
                out[p.relative_to(model_dir).as_posix()] = h.hexdigest()
    except OSError as exc:
        out["error"] = str(exc)


def test_peer_killed_mid_transfer_costs_a_retry_not_an_error(peer_cluster, origin_hashes):
    c = peer_cluster(4, extra=["--readahead-blocks", "0"])
    size = c.manifest.total_size
    assert read_all(c.model_dir(0)) == origin_hashes
    c.wait_announced({node_id_of(c.nodes[0])})

    got: dict = {}
    reader = threading.Thread(target=slow_read, args=(c.model_dir(1), got))
    reader.start()
    wait_for(lambda: c.tier_bytes(1, "peer") >= size // 4, 60, "node 2 reading from its peer")
    c.nodes[0].stop(kill=True)  # SIGKILL: connections reset under in-flight requests
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert got == origin_hashes  # every byte right, no EIO
    assert size // 4 <= c.tier_bytes(1, "peer") < size
    assert c.tier_bytes(1, "server") > 0  # the rest came from the next tier


def test_stalled_peer_is_hedged_to_the_server(peer_cluster, origin_hashes):
    c = peer_cluster(4, extra=["--peer-hedge", "0.5"])
    assert read_all(c.model_dir(0)) == origin_hashes
    c.wait_announced({node_id_of(c.nodes[0])})
    pid = c.nodes[0].proc.pid
    os.kill(pid, signal.SIGSTOP)  # hung, not dead: requests are accepted and never answered
    try:
        start = time.monotonic()
        shard = sorted(origin_hashes)[2]
        with open(c.model_dir(1) / shard, "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == origin_hashes[shard]
        assert time.monotonic() - start < 30
        assert c.tier_bytes(1, "server") > 0
    finally:
        os.kill(pid, signal.SIGCONT)


def _corrupt_blobs(cache_dir: Path) -> int:
    """Flip bytes in every cached blob on disk, behind the daemon's back."""
    n = 0
    for blob in (cache_dir / "blocks" / "blobs").rglob("*"):
        if blob.is_file() and blob.stat().st_size > 4096:
            with open(blob, "r+b") as fh:
                for off in range(0, blob.stat().st_size, 64 * 1024):
                    fh.seek(off)
                    b = fh.read(1)
                    fh.seek(off)
                    fh.write(bytes([b[0] ^ 0xFF]))
            n += 1
    return n


def test_corrupting_peer_is_detected_skipped_and_quarantined(peer_cluster, origin_hashes):
    c = peer_cluster(4)
    assert read_all(c.model_dir(0)) == origin_hashes
    liar = node_id_of(c.nodes[0])
    c.wait_announced({liar})
    assert _corrupt_blobs(c.nodes[0].cache_dir) >= 3

    assert read_all(c.model_dir(1)) == origin_hashes  # correct bytes despite the liar
    lines = list(c.status(1).peers)
    assert any(line.startswith(liar) and "quarantined" in line for line in lines), lines
    # once quarantined the liar is skipped: only the blocks already in flight hit it, at most
    # a hydration's workers plus the blocks readers expedite (every other block would, else)
    log = c.nodes[1].log()
    assert 1 <= log.count("served a corrupt block") <= DEFAULT_CONCURRENCY + EXPEDITED
    assert c.tier_bytes(1, "server") > 0

    # an honest peer is still used by the next reader, the liar is not trusted by it either
    c.wait_announced({node_id_of(c.nodes[1])})
    assert read_all(c.model_dir(2)) == origin_hashes
    assert c.tier_bytes(2, "peer") > 0
    assert (c.nodes[0].mountpoint / MODEL).is_dir()
