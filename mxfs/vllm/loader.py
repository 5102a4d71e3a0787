"""vLLM load format ``mx``: pull a source's post-processed tensors, or load the files and serve them.

Flow in each worker:
1. ``p2p``: when the registry lists a READY source with our exact identity (model,
   revision, dtype, quantization, tp/pp/ep, vLLM version, rank, device; one RPC), build the
   model, fill it with dummy weights, run vLLM's post-processing (CPU packing deferred,
   :mod:`mxfs.vllm.final_state`), READ the source's final tensors into ours over NIXL,
   verify every checksum, then pack. Any failure drops that model and goes on with 2;
2. otherwise the strategy chain (:mod:`mxfs.vllm.strategies`) loads the weights: ``files``
   (the mxfs mount or a local directory), ``download`` (no shared storage: the server
   streams the files into the local HF cache), ``model-streamer`` (``MX_MODEL_URI`` through
   runai-model-streamer), ``default`` (vLLM's loader); then vLLM's post-processing. The log
   names the winner;
3. serve the final tensors as a P2P source from a background thread (agent start,
   registration, checksums, publish, heartbeats), unless post-processing left state that
   tensors cannot carry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import time

import torch
from torch import nn
from vllm.config import ModelConfig, VllmConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from mxfs import envs
from mxfs.vllm.final_state import PostProcessing
from mxfs.vllm.p2p import P2PPull, SourceServer, p2p_enabled
from mxfs.vllm.plugin import LOAD_FORMAT
from mxfs.vllm.resolve import ResolvedModel, resolve
from mxfs.vllm.strategies import (
    FALLBACK_ERRORS,
    ChainResult,
    DefaultStrategy,
    DownloadStrategy,
    FilesStrategy,
    LoadChain,
    LoadContext,
    ModelStreamerStrategy,
    StrategyMiss,
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
        self._p2p = P2PPull()
        self._dummy = False  # load_weights fills dummy weights (a post-processed pull follows)
        self._p2p_skipped: list[tuple[str, str]] = []
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
        self._ctx = ctx = self._context(vllm_config, model_config)
        self._p2p_skipped = []
        if p2p_enabled(ctx):
            model = self._pull_processed(vllm_config, model_config, prefix)
            if model is not None:
                return model
        post = PostProcessing(defer=False) if p2p_enabled(ctx) else None
        with post or contextlib.nullcontext():
            model = super().load_model(vllm_config, model_config, prefix)
        if post is not None:
            self._serve(post)
        return model

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        if self._dummy:
            from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader

            DummyModelLoader(self._files_config).load_weights(model, model_config)
            return
        ctx = self._ctx or self._context_for_reload(model_config)
        chain = LoadChain([FilesStrategy(), DownloadStrategy(), ModelStreamerStrategy(), DefaultStrategy()])
        self.result = chain.run(model, ctx, self._p2p_skipped)

    def _pull_processed(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str) -> nn.Module | None:
        """Build, post-process, then pull the source's final tensors; None (and the reason kept) if not."""
        ctx = self._ctx
        assert ctx is not None
        try:
            client = self._p2p.find(ctx)
        except StrategyMiss as exc:
            log.info("mx: p2p: %s", exc)
            self._p2p_skipped = [("p2p", str(exc))]
            return None
        start = time.perf_counter()
        forward_context = vllm_config.compilation_config.static_forward_context
        moe_layers = vllm_config.compilation_config.static_all_moe_layers
        known_layers, known_moe = set(forward_context), len(moe_layers)
        post = PostProcessing(defer=True)
        model = tensors = None
        reason = ""
        try:
            self._dummy = True
            try:
                with post:
                    model = super().load_model(vllm_config, model_config, prefix)
            finally:
                self._dummy = False
            why = post.unpullable()
            if why:
                raise StrategyMiss(why)
            tensors = post.published()
            loaded = self._p2p.pull(client, ctx, tensors)
            post.rerun()
        except FALLBACK_ERRORS as exc:
            reason = str(exc) if isinstance(exc, StrategyMiss) else f"failed: {type(exc).__name__}: {exc}"
        if reason:
            client.close()
            self._p2p.close()
            log.warning("mx: p2p: %s: dropping the post-processed model, loading files", reason)
            self._p2p_skipped = [("p2p", reason)]
            del model, tensors, post
            for name in set(forward_context) - known_layers:  # the next build registers them again
                del forward_context[name]
            del moe_layers[known_moe:]
            gc.collect()
            return None
        self.result = ChainResult("p2p", loaded, time.perf_counter() - start)
        log.info("mx: strategy p2p won: %s in %.2fs (%.1f MB, %.2f GB/s); post-processed on this worker, "
                 "%d layer steps re-run after the pull", loaded.detail, self.result.seconds,
                 loaded.nbytes / 1e6, self.result.gbps, len(post.steps))
        self.source_server = SourceServer(ctx)
        self.source_server.serve(tensors, self._p2p.peer)
        return model

    def _context_for_reload(self, model_config: ModelConfig) -> LoadContext:
        """``load_weights`` called alone (weight reload): no identity, so no P2P."""
        try:
            resolved = resolve(model_config.model, model_config.revision)
        except FileNotFoundError:
            resolved = None
        return LoadContext(model_config, self._files_config, resolved, None, None, model_uri(model_config))

    def _serve(self, post: PostProcessing) -> None:
        """Serve the final tensors in the background, unless some final state is not in tensors."""
        ctx = self._ctx
        assert ctx is not None
        why = post.unpullable()
        if why:
            log.warning("mx: not serving as a source: %s", why)
            return
        self.source_server = SourceServer(ctx)
        self.source_server.serve(post.published(), None)
