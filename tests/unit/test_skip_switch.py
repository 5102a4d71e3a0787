"""MXFS_REQUIRE_ALL=1 turns 'skipped: X is missing' into a failure; GPU and MXFS_SKIP_VLLM stay skips."""

from __future__ import annotations

import pytest

from tests.support import needs

ABSENT = "mxfs_no_such_module_for_the_skip_switch"


class _NoGpu:
    class cuda:  # mimics torch.cuda
        @staticmethod
        def is_available() -> bool:
            return False


def test_without_the_switch_a_missing_component_skips(monkeypatch):
    monkeypatch.delenv(needs.REQUIRE_ALL, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not-a-real-server is not installed"):
        needs.need_program("not-a-real-server", "apt-get install it")
    with pytest.raises(pytest.skip.Exception):
        needs.need_module(ABSENT, "pip install it")


def test_with_the_switch_a_missing_component_fails(monkeypatch):
    monkeypatch.setenv(needs.REQUIRE_ALL, "1")
    monkeypatch.delenv("MXFS_SKIP_VLLM", raising=False)
    with pytest.raises(pytest.fail.Exception, match="MXFS_REQUIRE_ALL=1: not-a-real-server must be installed"):
        needs.need_program("not-a-real-server", "apt-get install it")
    with pytest.raises(pytest.fail.Exception):
        needs.need_module(ABSENT, "pip install it")
    with pytest.raises(pytest.fail.Exception, match="s3rver"):
        needs.missing("s3rver", "s3rver is not installed")
    for part in sorted(needs.VLLM_STACK):
        assert needs.required(part)


def test_skip_vllm_keeps_the_vllm_stack_optional_only(monkeypatch):
    monkeypatch.setenv(needs.REQUIRE_ALL, "1")
    monkeypatch.setenv("MXFS_SKIP_VLLM", "1")
    for part in sorted(needs.VLLM_STACK):
        with pytest.raises(pytest.skip.Exception):
            needs.missing(part, f"{part} missing")
    assert needs.required("fuse") and needs.required("redis-server") and needs.required("s3rver")


def test_no_gpu_is_always_a_skip(monkeypatch):
    monkeypatch.setenv(needs.REQUIRE_ALL, "1")
    with pytest.raises(pytest.skip.Exception, match="CUDA GPU"):
        needs.need_gpu(_NoGpu)


def test_present_components_pass_through(monkeypatch):
    monkeypatch.setenv(needs.REQUIRE_ALL, "1")
    assert needs.need_module("json", "stdlib").dumps([1]) == "[1]"
    assert needs.need_program("sh", "coreutils").endswith("/sh")
