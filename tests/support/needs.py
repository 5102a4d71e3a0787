"""One place that decides: skip a test because a component is missing, or fail the run.

``.ci/setup`` installs every component the README promises (FUSE, redis-server, s3rver, the
vLLM stack), and ``.ci/run`` sets ``MXFS_REQUIRE_ALL=1``: there a missing component fails the
test that needs it, so CI cannot be green with whole areas skipped. Without the switch (a
developer's machine) the test skips with the reason. Two things stay optional everywhere: a
CUDA GPU (CI has none), and the vLLM stack (torch, NIXL, vLLM) when ``MXFS_SKIP_VLLM=1`` told
``.ci/setup`` not to install it.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

from tests.support.cluster import fuse_available

REQUIRE_ALL = "MXFS_REQUIRE_ALL"
VLLM_STACK = frozenset({"torch", "nixl", "vllm"})


def required(component: str) -> bool:
    """Whether a missing ``component`` fails (rather than skips) the test that needs it."""
    if os.environ.get(REQUIRE_ALL, "0") != "1":
        return False
    return not (component in VLLM_STACK and os.environ.get("MXFS_SKIP_VLLM", "0") == "1")


def missing(component: str, reason: str) -> NoReturn:
    """Skip (or, where ``required``, fail) the current test or module: ``component`` is missing."""
    if required(component):
        pytest.fail(f"{reason} [{REQUIRE_ALL}=1: {component} must be installed; .ci/setup installs it]",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_fuse() -> None:
    """A usable /dev/fuse and fusermount3."""
    if not fuse_available():
        missing("fuse", "needs /dev/fuse and fusermount3 (apt-get install fuse3)")


def need_program(name: str, hint: str) -> str:
    """The path of executable ``name`` on PATH (e.g. redis-server)."""
    path = shutil.which(name)
    if path is None:
        missing(name, f"{name} is not installed ({hint})")
    return path


def need_module(name: str, hint: str, component: str | None = None) -> ModuleType:
    """Import ``name`` (like ``pytest.importorskip``); ``component`` defaults to its top package."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(component or name.partition(".")[0], f"cannot import {name}: {exc} ({hint})")


def need_gpu(torch: ModuleType) -> None:
    """A CUDA GPU: never required (CI has none), always a skip without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
