"""P2P tests: UCX stays on loopback; NIXL and torch are optional (tests skip without them)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("UCX_NET_DEVICES", "lo")


@pytest.fixture
def nixl_torch():
    pytest.importorskip("torch")
    from mxfs.weight_sources.agent import nixl_available

    if not nixl_available():
        pytest.skip("nixl is not installed (pip install --no-deps nixl nixl-cu13)")
