"""vLLM (CPU) end to end on a real mxfs mount: ``--load-format mx`` from files, then over NIXL.

Slow: each engine start takes ~30-60 s on a 2-core machine.
"""

from __future__ import annotations

import re

import pytest

from tests.vllm.engines import Engine

pytestmark = [pytest.mark.slow, pytest.mark.fuse, pytest.mark.timeout(1200)]  # three vLLM engines on 2 cores


def test_mx_files_then_nixl_pull_give_identical_greedy_output(vllm_installed, mxfs_mount, tmp_path):
    model = mxfs_mount.model_dir
    engines: list[Engine] = []
    try:
        baseline = Engine(model, tmp_path / "safetensors.log", load_format="safetensors")
        assert len(baseline.tokens) == 3 and all(len(t) == 24 for t in baseline.tokens)

        # first mx engine: nothing to pull from -> files (the baseline left them cached complete)
        first = Engine(model, tmp_path / "mx-first.log", hold=True)
        engines.append(first)
        log = first.log()
        assert "mx: p2p: no READY source for this identity" in log, log[-3000:]
        assert re.search(r"mx: strategy files won: .*\(mount [\d.]+ MB at [\d.]+ GB/s\) in [\d.]+s", log), log[-3000:]
        first.wait_log("serving as P2P source", timeout_s=120)  # published from a background thread
        assert first.tokens == baseline.tokens

        # second mx engine while the first is up: every weight over NIXL (DRAM), verified
        second = Engine(model, tmp_path / "mx-second.log")
        log = second.log()
        m = re.search(r"mx: strategy p2p won: (\d+) tensors over NIXL from source (\w+) in [\d.]+s "
                      r"\(([\d.]+) MB, [\d.]+ GB/s\)", log)
        assert m, log[-3000:]
        assert "strategy files won" not in log
        assert second.tokens == baseline.tokens

        # another identity (dtype) is never offered the first engine's tensors: files again
        other = Engine(model, tmp_path / "mx-fp32.log", dtype="float32")
        log = other.log()
        assert "mx: p2p: no READY source for this identity" in log and "over NIXL" not in log, log[-3000:]
    finally:
        for e in engines:
            e.stop()
