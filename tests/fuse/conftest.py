"""Every FUSE test runs twice: with kernel passthrough and with ``--no-passthrough``
(what a kernel older than 6.9 gets). Tests that need passthrough ask for ``passthrough``."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["passthrough", "no-passthrough"])
def mount_mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def start_mount(start_mount, mount_mode: str):
    """The shared factory, with ``--no-passthrough`` added in that mode."""

    def start(*args, extra: list[str] | None = None, **kw):
        flags = list(extra or [])
        if mount_mode == "no-passthrough":
            flags.append("--no-passthrough")
        return start_mount(*args, extra=flags, **kw)

    return start


@pytest.fixture
def passthrough(mount_mode: str) -> None:
    """Skip in the no-passthrough run (the test is about the kernel reading by itself)."""
    if mount_mode != "passthrough":
        pytest.skip("needs kernel passthrough")
