"""The real ModelExpress client (PyPI ``modelexpress``) in its own process, against ``mxfs server``.

Without the package these tests skip on a developer machine and FAIL in CI
(``MXFS_REQUIRE_ALL=1``, set by ``.ci/run``; tests/support/needs.py), so the compatibility
claim is never silently untested. It imports torch, so it belongs to the vLLM stack that
``MXFS_SKIP_VLLM=1`` leaves out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.needs import missing
from tests.support.procio import next_line

DRIVER = Path(__file__).with_name("upstream_driver.py")


def upstream_installed(cwd: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import modelexpress.p2p_pb2, modelexpress.client"],
                           cwd=cwd, capture_output=True, timeout=120, check=False)
    return probe.returncode == 0


class Upstream:
    """``upstream_driver.py`` in a subprocess; ``call`` sends one command and returns its answer."""

    def __init__(self, server: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, str(DRIVER), server], cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self._read(120)

    def _read(self, timeout_s: float) -> dict:
        line = next_line(self.proc, "{", timeout_s)
        if line is not None:
            return json.loads(line)
        raise TimeoutError(f"the ModelExpress driver did not answer (exit {self.proc.poll()})")

    def call(self, op: str, timeout_s: float = 60, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        out = self._read(timeout_s)
        assert out.pop("ok"), out.get("trace") or out
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator:
    """Factory: start (and always stop) ModelExpress client drivers pointed at a server."""
    cwd = tmp_path / "upstream-cwd"  # outside the modelexpress package: its types.py shadows the stdlib
    cwd.mkdir()
    if not upstream_installed(cwd):
        component = "torch" if os.environ.get("MXFS_SKIP_VLLM", "0") == "1" else "modelexpress"
        missing(component, "PyPI modelexpress is not importable (pip install --no-deps modelexpress==0.7.0, "
                           "as .ci/setup does)")
    drivers: list[Upstream] = []

    def start(server: str) -> Upstream:
        drivers.append(Upstream(server, cwd))
        return drivers[-1]

    yield start
    for d in drivers:
        d.stop()


@pytest.fixture(params=["embedded", "redis"])
def registry_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Short ModelExpress reaper timings for the server, on the embedded store or on Redis."""
    monkeypatch.setenv("MX_HEARTBEAT_TIMEOUT_SECS", "3")
    monkeypatch.setenv("MX_GC_TIMEOUT_SECS", "1.5")
    monkeypatch.setenv("MX_REAPER_SCAN_INTERVAL_SECS", "0.2")
    if request.param == "redis":
        redis_server = request.getfixturevalue("redis_server")
        import redis

        r = redis.Redis.from_url(redis_server.url)
        for key in r.scan_iter(match="mxfs:p2p/*"):
            r.delete(key)
        r.close()
        host, _, port = redis_server.url.removeprefix("redis://").split("/")[0].partition(":")
        monkeypatch.setenv("MX_METADATA_BACKEND", "redis")
        monkeypatch.setenv("MX_REDIS_HOST", host)  # ModelExpress's host/port variables, no URL
        monkeypatch.setenv("MX_REDIS_PORT", port)
    return request.param
