"""P2P tests: UCX stays on loopback; NIXL and torch are optional (tests skip without them)."""

from __future__ import annotations

import os

import pytest

from tests.support.needs import missing, need_module

os.environ.setdefault("UCX_NET_DEVICES", "lo")


@pytest.fixture
def nixl_torch():
    need_module("torch", "pip install torch==2.13.0")
    from mxfs.weight_sources.agent import nixl_available

    if not nixl_available():
        missing("nixl", "nixl is not installed (pip install --no-deps nixl nixl-cu13)")
