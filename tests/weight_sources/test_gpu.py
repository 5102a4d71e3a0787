"""GPU: the bench's three paths (D2D, CUDA IPC, NIXL VRAM READ), verified, on a small size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.needs import need_gpu, need_module

torch = need_module("torch", "pip install torch==2.13.0")

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_pull_paths_verified():
    need_gpu(torch)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_pull.py"), "--gib", "0.25", "--tensors", "8",
                          "--repeat", "1"], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, UCX_NET_DEVICES=os.environ.get("UCX_NET_DEVICES", "lo")))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch_ipc_pull" in out.stdout


def test_bench_dry_run_on_cpu(nixl_torch):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_pull.py"), "--device", "cpu", "--gib", "0.03",
                          "--tensors", "4", "--repeat", "1"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, UCX_NET_DEVICES="lo"))
    assert out.returncode == 0, out.stdout + out.stderr
    for path in ("d2d_copy_same_process", "torch_ipc_pull", "nixl_read_verified"):
        assert path in out.stdout
