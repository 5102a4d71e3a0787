"""vLLM (CPU) end to end on a real mxfs mount: ``--load-format mx`` from files, then over NIXL.

Slow: each engine start takes ~30-60 s on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.fuse, pytest.mark.timeout(1200)]  # three vLLM engines on 2 cores


class Engine:
    """tests/vllm/engine_proc.py in a subprocess, its output in a log file."""

    def __init__(self, model: Path, log: Path, load_format: str = "mx", dtype: str = "float16",
                 hold: bool = False, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self.result = log.with_suffix(".json")
        cmd = [sys.executable, "-m", "tests.vllm.engine_proc", "--model", str(model), "--load-format",
               load_format, "--dtype", dtype, "--result", str(self.result), *(["--hold"] if hold else [])]
        full_env = dict(os.environ, UCX_NET_DEVICES="lo", VLLM_PLUGINS="mx", PYTHONUNBUFFERED="1",
                        VLLM_LOGGING_LEVEL="INFO", **(env or {}))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, text=True, env=full_env)
        self.tokens = self._result(timeout_s=400)

    def _result(self, timeout_s: float) -> list[list[int]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None and not self.result.exists():
            time.sleep(0.5)
        if self.result.exists():
            return json.loads(self.result.read_text())["tokens"]
        self.stop()
        raise AssertionError(f"engine gave no result; log tail:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=30)


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
        assert "no P2P source used" in log, log[-3000:]
        assert re.search(r"mx: loaded .* from files in [\d.]+s: backing [\d.]+ MB at [\d.]+ GB/s", log), log[-3000:]
        assert "serving as P2P source" in log
        assert first.tokens == baseline.tokens

        # second mx engine while the first is up: every weight over NIXL (DRAM), verified
        second = Engine(model, tmp_path / "mx-second.log")
        log = second.log()
        m = re.search(r"mx: loaded weights over NIXL from source (\w+): (\d+) tensors, ([\d.]+) MB", log)
        assert m, log[-3000:]
        assert "from files" not in log
        assert second.tokens == baseline.tokens

        # another identity (dtype) is never offered the first engine's tensors: files again
        other = Engine(model, tmp_path / "mx-fp32.log", dtype="float32")
        log = other.log()
        assert "no P2P source used (no READY source" in log and "over NIXL" not in log, log[-3000:]
    finally:
        for e in engines:
            e.stop()
