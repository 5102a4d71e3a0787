"""vLLM general plugin (entry point ``vllm.general_plugins: mx``): registers load format ``mx``."""

from __future__ import annotations

import logging

LOAD_FORMAT = "mx"


def _share_vllm_logging() -> None:
    """mxfs' loader messages (path taken, GB/s) go wherever vLLM's own logs go."""
    ours, theirs = logging.getLogger("mxfs"), logging.getLogger("vllm")
    if not ours.handlers and theirs.handlers:
        for handler in theirs.handlers:
            ours.addHandler(handler)
        ours.setLevel(theirs.level or logging.INFO)
        ours.propagate = False


def register() -> None:
    """Called by vLLM in every process; importing the loader registers it (idempotent)."""
    _share_vllm_logging()
    from mxfs.vllm import loader  # noqa: F401
