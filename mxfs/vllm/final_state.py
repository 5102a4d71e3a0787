"""The tensors a worker publishes and pulls: the model's state after vLLM's post-processing.

A target builds the model, fills it with dummy weights, runs vLLM's post-processing
(``process_weights_after_loading``: repacking, transposes, quantization), then pulls the
source's final tensors into its own final tensors. That works wherever post-processing ends
in tensors held as parameters or buffers (e.g. vLLM-CPU's int4 GPTQ/AWQ kernel re-lays its
``qweight``/``scales`` out as new tensors).

Two steps end in state no tensor holds. On CPU, ``dispatch_cpu_unquantized_gemm`` packs an
unquantized linear's weight into a oneDNN handle (or a closure over a packed copy) and,
for most layers, replaces the weight with an empty parameter; attention layers copy their
scales into host floats and tensors. For those layers the published state is the layer's
tensors as they were just before that step, on both sides; a target defers the step during
its own post-processing, pulls, then runs it on the pulled tensors. Any other state
post-processing leaves outside parameters and buffers (another handle maker, a new plain
tensor attribute) cannot be pulled: such a model is neither published nor pulled
(:meth:`PostProcessing.unpullable`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

#: vLLM's CPU ops that return an opaque kernel handle (its packed weights live inside it)
HANDLE_MAKERS = ("create_onednn_mm", "create_onednn_scaled_mm")


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, as plain tensors over the same storage."""
    out = {name: p.data for name, p in model.named_parameters()}
    out.update({name: b.data for name, b in model.named_buffers()})
    return out


def plain_tensor_attrs(model: nn.Module) -> dict[tuple[int, str], tuple[str, torch.Tensor]]:
    """Tensors held as plain module attributes (not parameters or buffers).

    ``(id(module), attr) -> (dotted name, tensor)``.
    """
    out = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                out[(id(module), attr)] = (f"{name}.{attr}" if name else attr, value)
    return out


@dataclass
class Step:
    """One post-processing step of one layer that a target runs again after the pull."""

    module: nn.Module
    run: Callable[[], None]
    before: dict[str, torch.Tensor]  # the layer's own tensors just before the step


def own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's own parameters and buffers (not its children's)."""
    out = {name: p.data for name, p in module.named_parameters(recurse=False)}
    out.update({name: b.data for name, b in module.named_buffers(recurse=False)})
    return out


@dataclass
class PostProcessing:
    """A context around vLLM's post-processing that records (source) or defers (target) re-runnable steps.

    Two kinds of step derive state that tensors cannot carry, so a target runs them again
    after the pull, on the pulled tensors, and both sides publish those layers' tensors as
    they were just before the step:

    * ``dispatch_cpu_unquantized_gemm`` (CPU: a linear's weight packed into a oneDNN handle
      or a closure; it replaces tensors, never writes into them, so the source keeps
      references);
    * attention layers' own post-processing, which vLLM runs after every other module
      (scales copied into host floats and tensors; MLA's derived matrices). It may write
      its buffers in place, so the source keeps copies of them (they are small).

    Handle makers called from anywhere else, and plain tensor attributes that other steps
    create or replace, are noted as state a pull cannot reproduce.
    """

    defer: bool
    steps: list[Step] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    model: nn.Module | None = None
    _real_dispatch: Callable | None = None
    _in_step: int = 0
    _stack: contextlib.ExitStack | None = None

    def __enter__(self) -> PostProcessing:
        from vllm import _custom_ops as ops
        from vllm.model_executor.layers import utils
        from vllm.model_executor.model_loader import base_loader
        from vllm.model_executor.model_loader import utils as loader_utils

        stack = contextlib.ExitStack()
        self._real_dispatch = utils.dispatch_cpu_unquantized_gemm
        stack.enter_context(_patched(utils, "dispatch_cpu_unquantized_gemm", self._dispatch))
        is_attention = loader_utils.is_deferred_attention_layer
        stack.enter_context(_patched(loader_utils, "is_deferred_attention_layer", lambda module: False))
        stack.enter_context(_patched(base_loader, "process_weights_after_loading",
                                     self._wrap_process(base_loader.process_weights_after_loading, is_attention,
                                                        loader_utils.device_loading_context)))
        for maker in HANDLE_MAKERS:
            if hasattr(ops, maker):
                stack.enter_context(_patched(ops, maker, self._wrap_handle_maker(maker, getattr(ops, maker))))
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        assert self._stack is not None
        self._stack.close()

    def _add(self, module: nn.Module, run: Callable[[], None], copy_before: bool) -> None:
        before = own_tensors(module)
        if copy_before and not self.defer:
            before = {name: t.clone() for name, t in before.items()}
        self.steps.append(Step(module, run, before))
        if not self.defer:
            self._run(run)

    def _run(self, run: Callable[[], None]) -> None:
        self._in_step += 1
        try:
            run()
        finally:
            self._in_step -= 1

    def _dispatch(self, layer: nn.Module, remove_weight: bool) -> None:
        real = self._real_dispatch
        self._add(layer, lambda: real(layer, remove_weight), copy_before=False)

    def _wrap_handle_maker(self, name: str, real: Callable) -> Callable:
        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            if not self._in_step:
                self.opaque.append(f"{name} (a kernel handle built outside the steps a target re-runs)")
            return real(*args, **kwargs)
        return wrapper

    def _wrap_process(self, real: Callable, is_attention: Callable, on_device: Callable) -> Callable:
        @functools.wraps(real)
        def wrapper(model: nn.Module, model_config, target_device, *args, **kwargs):
            self.model = model
            before = plain_tensor_attrs(model)
            real(model, model_config, target_device, *args, **kwargs)  # attention layers skipped (patched)
            for _, module in model.named_modules():
                if is_attention(module):
                    def run(module=module):
                        with on_device(module, target_device):
                            module.process_weights_after_loading(model_config.dtype)
                    self._add(module, run, copy_before=True)
            redone = {id(s.module) for s in self.steps}
            self.opaque += [f"{name} (a tensor outside parameters and buffers)"
                            for key, (name, value) in plain_tensor_attrs(model).items()
                            if before.get(key, (name, None))[1] is not value and key[0] not in redone]
        return wrapper

    # -- after post-processing ----------------------------------------------------------------

    def unpullable(self) -> str | None:
        """Why this model's final state cannot be moved as tensors (None: it can)."""
        if self.model is None:
            return "vLLM's post-processing did not run through the loader"
        if self.opaque:
            return f"post-processing left {len(self.opaque)} pieces of state outside tensors: {self.opaque[:3]}"
        return None

    def published(self) -> dict[str, torch.Tensor]:
        """Every final parameter and buffer; a re-run step's layer as it was before that step."""
        assert self.model is not None
        tensors = model_tensors(self.model)
        names: dict[int, str] = {}
        for name, module in self.model.named_modules():
            names.setdefault(id(module), name)
        for step in self.steps:
            prefix = names.get(id(step.module))
            if prefix is None:
                raise LookupError("a post-processed layer is not part of the model")
            for tname, t in step.before.items():
                tensors[f"{prefix}.{tname}" if prefix else tname] = t
        return tensors

    def rerun(self) -> None:
        """Run the deferred steps, in vLLM's order (after the pull, on the pulled tensors)."""
        assert self.defer
        for step in self.steps:
            self._run(step.run)
        log.debug("mx: re-ran %d post-processing steps after the pull", len(self.steps))


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)
