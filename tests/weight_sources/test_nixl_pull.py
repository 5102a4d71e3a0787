"""Real NIXL (UCX, DRAM) pulls between processes, metadata exchanged through a real server."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mxfs.weight_sources.model import SourceIdentity, Status
from tests.support.needs import need_module
from tests.support.procio import next_line

torch = need_module("torch", "pip install torch==2.13.0")

IDENT = SourceIdentity("test-org/tiny-llama", "b" * 40, "bfloat16", backend_version="test", device="cpu")


class Source:
    """tests/weight_sources/source_proc.py in a subprocess."""

    def __init__(self, server: str, identity: SourceIdentity, seed: int = 0, mb: int = 8) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.weight_sources.source_proc", "--server", server, "--identity",
             json.dumps(identity.to_json()), "--seed", str(seed), "--mb", str(mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, UCX_NET_DEVICES="lo"),
        )
        self.source_id = self._line("READY ", 60).split()[1]

    def _line(self, prefix: str, timeout_s: float) -> str:
        """The next stdout line starting with ``prefix`` (NIXL logs to stdout too)."""
        line = next_line(self.proc, prefix, timeout_s)
        if line is not None:
            return line
        raise TimeoutError(f"source process never said {prefix!r}")

    def send(self, cmd: str, expect: str | None = None) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        if expect:
            self._line(expect, 30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(timeout=20)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def server(start_server, nixl_torch):
    return start_server()


@pytest.fixture
def sources(server):
    started: list[Source] = []

    def start(identity: SourceIdentity = IDENT, **kw) -> Source:
        started.append(Source(server.address, identity, **kw))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def target_peer(server, identity: SourceIdentity = IDENT, seed: int = 0, mb: int = 8):
    from mxfs.weight_sources.client import SourceClient
    from mxfs.weight_sources.peer import Peer
    from tests.weight_sources.source_proc import make_tensors

    want = make_tensors(seed, mb)
    mine = {k: torch.empty_like(v) for k, v in want.items()}
    mine["lm_head.weight"] = mine["embed.weight"]
    peer = Peer(SourceClient(server.address), identity)
    peer.register(mine)
    return peer, mine, want


def test_pull_over_nixl_is_byte_exact_then_target_serves(server, sources):
    src = sources(mb=64)
    peer, mine, want = target_peer(server, mb=64)
    try:
        assert peer.candidates() == [src.source_id]
        stats = peer.pull_any(max_tries=3, timeout_s=60)
        assert stats.source_id == src.source_id and stats.nbytes >= 64 << 20
        for name in want:
            assert torch.equal(mine[name].view(torch.uint8), want[name].view(torch.uint8)), name
        peer.publish()  # the target becomes a source: a third process can now pick either
        from mxfs.weight_sources.client import SourceClient

        listed = {s.source_id for s in SourceClient(server.address).list(IDENT)}
        assert listed == {src.source_id, peer.source_id}
    finally:
        peer.close()
    from mxfs.weight_sources.client import SourceClient

    assert [s.source_id for s in SourceClient(server.address).list(IDENT)] == [src.source_id]


def test_other_identity_is_never_offered(server, sources):
    from mxfs.weight_sources.errors import NoSource

    sources(dataclasses.replace(IDENT, dtype="float16"))
    sources(dataclasses.replace(IDENT, rank=1))
    peer, _, _ = target_peer(server)
    try:
        with pytest.raises(NoSource):
            peer.pull_any(max_tries=3, timeout_s=30)
    finally:
        peer.close()


def test_mismatched_tensors_are_rejected(server, sources):
    from mxfs.weight_sources.errors import NoSource

    sources(seed=0, mb=8)
    peer, _, _ = target_peer(server, mb=16)  # more layers than the source has
    try:
        with pytest.raises(NoSource, match="source lacks"):
            peer.pull_any(max_tries=3, timeout_s=30)
    finally:
        peer.close()


def test_corrupted_source_tensor_fails_its_checksum(server, sources):
    from mxfs.weight_sources.errors import NoSource

    src = sources(mb=8)
    src.send("corrupt layers.1.w", expect="CORRUPTED")
    peer, _, _ = target_peer(server, mb=8)
    try:
        with pytest.raises(NoSource, match=r"failed their checksum \(e.g. \['layers.1.w'\]\)"):
            peer.pull_any(max_tries=3, timeout_s=30)
    finally:
        peer.close()


def test_source_killed_mid_transfer_fails_cleanly(server, sources, monkeypatch):
    from mxfs.weight_sources import agent as agent_mod
    from mxfs.weight_sources.errors import NoSource

    src = sources(mb=256)
    monkeypatch.setattr(agent_mod, "XFER_BATCH_BYTES", 16 << 20)
    monkeypatch.setattr(agent_mod, "MAX_INFLIGHT", 1)
    peer, _, _ = target_peer(server, mb=256)
    real_transfer = peer.agent._agent.transfer
    posted = []

    def transfer_then_kill(handle, *a):
        state = real_transfer(handle, *a)
        posted.append(state)
        if len(posted) == 2:
            src.proc.send_signal(signal.SIGKILL)
            src.proc.wait(timeout=10)
        return state

    monkeypatch.setattr(peer.agent._agent, "transfer", transfer_then_kill)
    start = time.monotonic()
    try:
        with pytest.raises(NoSource):
            peer.pull_any(max_tries=3, timeout_s=20)
    finally:
        peer.close()
    assert len(posted) >= 2
    assert time.monotonic() - start < 20 + 30  # the pull's own bound plus slack for a loaded machine


def test_killed_source_turns_stale_then_is_reaped(start_server, nixl_torch, monkeypatch):
    from mxfs.weight_sources.client import SourceClient

    monkeypatch.setenv("MX_HEARTBEAT_TIMEOUT_SECS", "1")
    monkeypatch.setenv("MX_GC_TIMEOUT_SECS", "8")  # a wide STALE window: observed even on 2 loaded cores
    monkeypatch.setenv("MX_REAPER_SCAN_INTERVAL_SECS", "0.2")
    monkeypatch.setenv("MX_HEARTBEAT_INTERVAL_SECS", "0.3")
    server = start_server()
    src = Source(server.address, IDENT)
    client = SourceClient(server.address)
    try:
        assert [s.status for s in client.list(IDENT)] == [Status.READY]
        src.proc.send_signal(signal.SIGKILL)
        src.proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while client.list(IDENT) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.list(IDENT) == []
        # not fresh already hides it from READY lists; the reaper's next pass marks it STALE
        def statuses() -> list[Status]:
            return [s.status for s in client.list(IDENT, include_stale=True)]
        while statuses() != [Status.STALE] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert statuses() == [Status.STALE]
        while client.list(IDENT, include_stale=True) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.list(IDENT, include_stale=True) == []
    finally:
        client.close()
        src.stop()
