"""The ``mxfs`` command line against a real server process."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import MODEL


def _mxfs(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mxfs", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_health_and_model_commands(start_server, monkeypatch):
    server = start_server()
    out = _mxfs("health", "--server", f"http://{server.address}")
    assert out.returncode == 0 and "status=ok" in out.stdout, out.stderr
    out = _mxfs("model", "--server", server.address, "files", MODEL)
    assert out.returncode == 0 and "model.safetensors.index.json" in out.stdout and "tensors" in out.stdout
    out = _mxfs("model", "--server", server.address, "list")
    assert out.returncode == 0 and MODEL in out.stdout
    server.stop()
    out = _mxfs("health", "--server", server.address, "--timeout", "2")
    assert out.returncode == 2 and "error" in out.stderr


def test_config_printing_and_validation(tmp_path):
    out = _mxfs("server", "--print-config")
    assert out.returncode == 0 and "server:" in out.stdout and "block_size: 4194304" in out.stdout
    cfg = tmp_path / "mxfs.yaml"
    cfg.write_text(out.stdout)
    out = _mxfs("server", "--config", str(cfg), "--validate-config", "--port", "9999")
    assert out.returncode == 0 and "'port': 9999" in out.stdout, out.stderr
    cfg.write_text("server:\n  block_size: 3000\n")
    out = _mxfs("server", "--config", str(cfg), "--validate-config")
    assert out.returncode == 2 and "block size" in out.stderr
    out = _mxfs("mount", "/tmp/x", "--validate-config", env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "server" in out.stderr


def test_help_lists_every_command():
    out = _mxfs("--help")
    for cmd in ("server", "mount", "umount", "health", "model", "prefetch", "status", "demo", "csi"):
        assert cmd in out.stdout
