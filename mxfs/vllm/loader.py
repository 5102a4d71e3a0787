"""vLLM load format ``mx``: fill the built model through a chain of strategies, then serve it.

Flow in each worker: build the model, then
1. run the strategy chain (:mod:`mxfs.vllm.strategies`): ``p2p`` (NIXL pull of every
   parameter and buffer from a READY source with our exact identity: model, revision, dtype,
   quantization, tp/pp/ep, vLLM version, rank, device; verified by per-tensor checksums),
   ``files`` (the mxfs mount or a local directory), ``download`` (no shared storage: the
   server streams the files into the local HF cache), ``model-streamer`` (``MX_MODEL_URI``
   through runai-model-streamer), ``default`` (vLLM's loader). The log names the winner;
2. run vLLM's post-processing;
3. serve the loaded tensors as a P2P source from a background thread (agent start,
   registration, checksums, publish, heartbeats), unless post-processing changed any of
   them in place (a target would get processed bytes twice).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn
from vllm.config import ModelConfig, VllmConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from mxfs import envs
from mxfs.vllm.p2p import P2PStrategy, SourceServer, fingerprint, fingerprints, model_tensors, p2p_enabled
from mxfs.vllm.plugin import LOAD_FORMAT
from mxfs.vllm.resolve import ResolvedModel, resolve
from mxfs.vllm.strategies import (
    ChainResult,
    DefaultStrategy,
    DownloadStrategy,
    FilesStrategy,
    LoadChain,
    LoadContext,
    ModelStreamerStrategy,
)
from mxfs.weight_sources.model import SourceIdentity

log = logging.getLogger(__name__)


def model_uri(model_config: ModelConfig) -> str | None:
    """Where the ``model-streamer`` strategy reads weights: ``MX_MODEL_URI``.

    (vLLM itself refuses an object-store ``--model`` with any load format but its own
    streamers, so ``--model`` names a local directory with the config and tokenizer.)
    """
    return envs.MX_MODEL_URI.get()


@register_model_loader(LOAD_FORMAT)
class MxModelLoader(BaseModelLoader):
    """``--load-format mx``."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self._files_config = dataclasses.replace(load_config, load_format="safetensors")
        self._ctx: LoadContext | None = None
        self._p2p = P2PStrategy()
        self._before: dict[str, bytes] = {}
        self._loaded: dict[str, torch.Tensor] = {}
        self.result: ChainResult | None = None
        self.source_server: SourceServer | None = None

    @property
    def path_taken(self) -> str:
        return self.result.winner if self.result else ""

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing to fetch ahead: every strategy fetches what it needs when it loads."""

    # -- identity ------------------------------------------------------------------------------

    def _context(self, vllm_config: VllmConfig, model_config: ModelConfig) -> LoadContext:
        try:
            resolved: ResolvedModel | None = resolve(model_config.model, model_config.revision)
        except FileNotFoundError as exc:
            log.info("mx: %s", exc)
            resolved = None
        server = resolved.server if resolved else envs.MODEL_EXPRESS_URL.get()
        return LoadContext(model_config, self._files_config, resolved,
                           self._identity(vllm_config, model_config, resolved), server, model_uri(model_config))

    @staticmethod
    def _identity(vllm_config: VllmConfig, model_config: ModelConfig,
                  r: ResolvedModel | None) -> SourceIdentity | None:
        import vllm

        if r is None or not r.name or not r.revision:
            log.info("mx: %s is not an mxfs or HF-layout model (no resolved revision): P2P off",
                     r.path if r else model_config.model)
            return None
        par = vllm_config.parallel_config
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return SourceIdentity(
            model=r.name, revision=r.revision, dtype=str(model_config.dtype).removeprefix("torch."),
            quantization=str(model_config.quantization or "none"), tp_size=par.tensor_parallel_size,
            pp_size=par.pipeline_parallel_size,
            ep_size=par.tensor_parallel_size * par.data_parallel_size if par.enable_expert_parallel else 1,
            backend="vllm", backend_version=vllm.__version__, rank=rank,
            device=vllm_config.device_config.device.type,
        )

    # -- loading -------------------------------------------------------------------------------

    def load_model(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = "") -> nn.Module:
        self._ctx = self._context(vllm_config, model_config)
        model = super().load_model(vllm_config, model_config, prefix)
        self._serve()
        return model

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        ctx = self._ctx or self._context_for_reload(model_config)
        chain = LoadChain([self._p2p, FilesStrategy(), DownloadStrategy(), ModelStreamerStrategy(),
                           DefaultStrategy()])
        self.result = chain.run(model, ctx)
        self._loaded = model_tensors(model)  # loaders may replace parameters
        if p2p_enabled(ctx):
            self._before = fingerprints(self._loaded)

    def _context_for_reload(self, model_config: ModelConfig) -> LoadContext:
        """``load_weights`` called alone (weight reload): no identity, so no P2P."""
        try:
            resolved = resolve(model_config.model, model_config.revision)
        except FileNotFoundError:
            resolved = None
        return LoadContext(model_config, self._files_config, resolved, None, None, model_uri(model_config))

    def _serve(self) -> None:
        """Serve the loaded tensors in the background, unless post-processing changed one in place."""
        ctx = self._ctx
        if ctx is None or not p2p_enabled(ctx):
            return
        changed = [n for n, t in self._loaded.items() if n in self._before and fingerprint(t) != self._before[n]]
        if changed:
            log.warning("mx: post-processing changed %d tensors in place (e.g. %s): not serving as a source",
                        len(changed), changed[:3])
            if self._p2p.peer is not None:
                self._p2p.peer.close()
            return
        self.source_server = SourceServer(ctx)
        self.source_server.serve(self._loaded, self._p2p.peer)

