"""vLLM load format ``mx``: pull weights over NIXL from a running worker, else read mxfs files.

Flow in each worker: build the model, then
1. if a READY source with our exact identity exists (model, revision, dtype, quantization,
   tp/pp/ep, vLLM version, rank, device), READ every parameter and buffer from it into ours
   and verify names, dtypes, shapes, sizes and per-tensor checksums; at most a few sources
   are tried, in random order;
2. otherwise (or after any failure) load every weight from the files: the daemon's complete
   backing files directly, else through the mount with large reads;
3. after vLLM's post-processing, publish the loaded tensors as a source and heartbeat until
   the process exits. Tensors that post-processing changed in place are never published.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from torch import nn
from vllm.config import ModelConfig, VllmConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.model_loader.weight_utils import filter_safetensors_files_by_weight_name

from mxfs import envs
from mxfs.errors import MxfsError
from mxfs.vllm.files import ReadStats, iter_weights
from mxfs.vllm.plugin import LOAD_FORMAT
from mxfs.vllm.resolve import ResolvedModel, resolve
from mxfs.weight_sources.agent import nixl_available
from mxfs.weight_sources.checksum import checksum
from mxfs.weight_sources.client import SourceClient
from mxfs.weight_sources.errors import NoSource, P2PError
from mxfs.weight_sources.model import SourceIdentity
from mxfs.weight_sources.peer import Peer

log = logging.getLogger(__name__)
_LIVE_PEERS: list[Peer] = []  # sources stay alive (and heartbeat) for the life of the process


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, as plain tensors over the same storage."""
    out = {name: p.data for name, p in model.named_parameters()}
    out.update({name: b.data for name, b in model.named_buffers()})
    return out


class _FileLoader(DefaultModelLoader):
    """vLLM's default loader, reading safetensors through :func:`iter_weights`."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.stats = ReadStats()

    def _get_weights_iterator(self, source: DefaultModelLoader.Source):
        _, files, use_safetensors, _ = self._prepare_weights(
            source.model_or_path, source.subfolder, source.revision, source.fall_back_to_pt,
            source.allow_patterns_overrides)
        if not use_safetensors:
            return super()._get_weights_iterator(source)
        if source.is_unused_weight is not None:
            files = filter_safetensors_files_by_weight_name(files, source.is_unused_weight)
        if self.counter_before_loading_weights == 0.0:
            self.counter_before_loading_weights = time.perf_counter()
        weights = iter_weights([Path(f) for f in sorted(files)], self.stats)
        return ((source.prefix + name, tensor) for name, tensor in weights)


@register_model_loader(LOAD_FORMAT)
class MxModelLoader(BaseModelLoader):
    """``--load-format mx``."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self._files = _FileLoader(dataclasses.replace(load_config, load_format="safetensors"))
        self._identity: SourceIdentity | None = None
        self._resolved: ResolvedModel | None = None
        self._peer: Peer | None = None
        self._loaded: dict[str, torch.Tensor] = {}
        self._sums: dict[str, bytes] = {}
        self.path_taken = ""

    def download_model(self, model_config: ModelConfig) -> None:
        self._files.download_model(model_config)

    # -- identity ------------------------------------------------------------------------------

    def _make_identity(self, vllm_config: VllmConfig, model_config: ModelConfig) -> SourceIdentity | None:
        import vllm

        try:
            self._resolved = resolve(model_config.model, model_config.revision)
        except FileNotFoundError as exc:
            log.info("mx: %s: P2P off", exc)
            return None
        r = self._resolved
        if not r.name or not r.revision:
            log.info("mx: %s is not an mxfs or HF-layout model (no resolved revision): P2P off", r.path)
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

    def _make_peer(self) -> Peer | None:
        if self._identity is None or not envs.flag(envs.MX_P2P):
            return None
        server = self._resolved.server if self._resolved else None
        if not server:
            log.info("mx: no server address (MODEL_EXPRESS_URL or a mount's user.mxfs.server): P2P off")
            return None
        if not nixl_available():
            log.info("mx: nixl is not installed: P2P off")
            return None
        backends = tuple(b.strip() for b in (envs.MX_NIXL_BACKENDS.get() or "UCX").split(",") if b.strip())
        try:
            return Peer(SourceClient(server), self._identity, backends)
        except P2PError as exc:
            log.warning("mx: cannot start a NIXL agent (%s): P2P off", exc)
            return None

    # -- loading -------------------------------------------------------------------------------

    def load_model(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = "") -> nn.Module:
        self._identity = self._make_identity(vllm_config, model_config)
        self._peer = self._make_peer()
        model = super().load_model(vllm_config, model_config, prefix)
        self._publish()
        return model

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        tensors = model_tensors(model)
        buffers = {name for name, _ in model.named_buffers()}
        start = time.perf_counter()
        if self._peer is not None and self._pull(tensors, buffers):
            self.path_taken = "p2p"
        else:
            self._files.load_weights(model, model_config)
            tensors = model_tensors(model)  # loaders may replace parameters
            self._sums = {name: checksum(t) for name, t in tensors.items()} if self._peer else {}
            self.path_taken = "files"
            nbytes = sum(self._files.stats.nbytes.values())
            log.info("mx: loaded %s from files in %.2fs: %s (%.2f GB/s overall)", model_config.model,
                     time.perf_counter() - start, self._files.stats.summary(),
                     nbytes / max(time.perf_counter() - start, 1e-9) / 1e9)
        self._loaded = tensors

    def _pull(self, tensors: dict[str, torch.Tensor], buffer_names: set[str]) -> bool:
        """Pull every tensor from a source; False (buffers restored) when files must be read."""
        assert self._peer is not None
        if any(t.is_meta for t in tensors.values()):
            log.info("mx: model has meta tensors: P2P off")
            return False
        buffers = {n: tensors[n].clone() for n in buffer_names if n in tensors}  # files do not rewrite these
        try:
            self._peer.register(tensors)
            stats = self._peer.pull_any(int(envs.MX_P2P_MAX_TRIES.get() or 3),
                                        float(envs.MX_P2P_TIMEOUT_S.get() or 120))
        except NoSource as exc:
            log.info("mx: no P2P source used (%s): loading from files", exc)
            for name, saved in buffers.items():
                tensors[name].copy_(saved)
            return False
        except (P2PError, MxfsError) as exc:
            log.warning("mx: P2P failed (%s): loading from files", exc)
            for name, saved in buffers.items():
                tensors[name].copy_(saved)
            return False
        self._sums = stats.checksums
        log.info("mx: loaded weights over NIXL from source %s: %d tensors, %.1f MB in %.3fs (%.2f GB/s)",
                 stats.source_id, stats.tensors, stats.nbytes / 1e6, stats.seconds, stats.gbps)
        return True

    def _publish(self) -> None:
        """Serve the loaded tensors, unless post-processing changed any of them in place."""
        peer = self._peer
        if peer is None:
            return
        changed = [n for n, t in self._loaded.items() if n in self._sums and checksum(t) != self._sums[n]]
        if changed:
            log.warning("mx: post-processing changed %d tensors in place (e.g. %s): not serving as a source",
                        len(changed), changed[:3])
            peer.close()
            return
        try:
            peer.publish(self._loaded)
        except (P2PError, MxfsError) as exc:
            log.warning("mx: could not publish as a source: %s", exc)
            peer.close()
            return
        _LIVE_PEERS.append(peer)
