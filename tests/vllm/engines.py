"""A vLLM engine (tests/vllm/engine_proc.py) in a subprocess, for the end-to-end loader tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


class Engine:
    """tests/vllm/engine_proc.py in a subprocess, its output in a log file."""

    def __init__(self, model: Path | str, log: Path, load_format: str = "mx", dtype: str = "float16",
                 hold: bool = False, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self.result = log.with_suffix(".json")
        cmd = [sys.executable, "-m", "tests.vllm.engine_proc", "--model", str(model), "--load-format",
               load_format, "--dtype", dtype, "--result", str(self.result), *(["--hold"] if hold else [])]
        full_env = dict(os.environ, UCX_NET_DEVICES="lo", VLLM_PLUGINS="mx", PYTHONUNBUFFERED="1",
                        VLLM_LOGGING_LEVEL="INFO", VLLM_CPU_KVCACHE_SPACE="1", **(env or {}))
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

    def wait_log(self, text: str, timeout_s: float) -> None:
        """Wait (bounded) until ``text`` appears in the engine's log."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} not in the engine log; tail:\n{self.log()[-3000:]}")
            time.sleep(0.5)

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
