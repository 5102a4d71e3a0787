"""The ``mx`` loader's ways to fill a built model with weights, tried in order by :class:`LoadChain`.

Each strategy has a tiny contract: ``name``, ``is_available(ctx)`` (cheap, no I/O beyond a
stat or an xattr) and ``load(model, ctx)``, which fills every weight or raises. An expected
miss (no READY source, no such file) is :class:`StrategyMiss`; any other failure is logged and
the next strategy overwrites every weight again, so a failed strategy never leaves a
half-loaded model behind. The chain records which strategy won and logs its GB/s.

Order (the ModelExpress docs' promise): ``p2p`` (NIXL pull from a READY source: run by the
loader itself around post-processing, :mod:`mxfs.vllm.p2p`, before this chain), ``files``
(the node's mxfs mount, or a local directory such as the server's shared cache), ``download``
(``MODEL_EXPRESS_NO_SHARED_STORAGE=1``: the server streams the files into the local HF
cache, resumable and verified), ``model-streamer`` (``MX_MODEL_URI``: runai-model-streamer
reads the safetensors straight into tensors from ``s3://``, ``gs://``, ``az://``, a path or an
HF id in the HF cache), ``default`` (vLLM's own safetensors loader).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.model_loader.weight_utils import filter_safetensors_files_by_weight_name

from mxfs import envs
from mxfs.errors import MxfsError
from mxfs.vllm.files import ReadStats, iter_weights
from mxfs.vllm.resolve import ResolvedModel, hf_snapshot

if TYPE_CHECKING:
    from mxfs.weight_sources.model import SourceIdentity

log = logging.getLogger(__name__)

OBJECT_SCHEMES = ("s3://", "gs://", "az://")
#: failures after which the next strategy reloads everything (bugs such as TypeError propagate)
FALLBACK_ERRORS = (MxfsError, OSError, RuntimeError, ValueError, LookupError)


class StrategyMiss(MxfsError):
    """The strategy cannot serve this model (an expected miss): try the next one."""


@dataclass
class LoadContext:
    """What every strategy may look at; filled once per load by the loader."""

    model_config: ModelConfig
    load_config: LoadConfig  # a plain safetensors LoadConfig for the file-reading strategies
    resolved: ResolvedModel | None
    identity: SourceIdentity | None = None
    server: str | None = None
    uri: str | None = None  # MX_MODEL_URI


@dataclass(frozen=True)
class Loaded:
    """What a strategy moved: bytes and a short description for the log."""

    nbytes: int
    detail: str = ""


class Strategy(Protocol):
    name: str

    def is_available(self, ctx: LoadContext) -> bool: ...

    def load(self, model: nn.Module, ctx: LoadContext) -> Loaded: ...


@dataclass
class ChainResult:
    """Which strategy won, what it moved, and why the ones before it did not."""

    winner: str
    loaded: Loaded
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def gbps(self) -> float:
        return self.loaded.nbytes / max(self.seconds, 1e-9) / 1e9


class LoadChain:
    """Try strategies in order; the first that loads every weight wins."""

    def __init__(self, strategies: list[Strategy]) -> None:
        self.strategies = strategies

    def run(self, model: nn.Module, ctx: LoadContext,
            skipped_before: list[tuple[str, str]] | None = None) -> ChainResult:
        """Load ``model``; ``skipped_before`` names steps already tried (for the log)."""
        skipped: list[tuple[str, str]] = list(skipped_before or [])
        for strategy in self.strategies:
            if not strategy.is_available(ctx):
                skipped.append((strategy.name, "not available"))
                continue
            start = time.perf_counter()
            try:
                loaded = strategy.load(model, ctx)
            except StrategyMiss as exc:
                log.info("mx: %s: %s", strategy.name, exc)
                skipped.append((strategy.name, str(exc)))
                continue
            except FALLBACK_ERRORS as exc:
                log.warning("mx: %s failed (%s: %s): trying the next strategy", strategy.name,
                            type(exc).__name__, exc)
                skipped.append((strategy.name, f"failed: {exc}"))
                continue
            result = ChainResult(strategy.name, loaded, time.perf_counter() - start, skipped)
            log.info("mx: strategy %s won: %s in %.2fs (%.1f MB, %.2f GB/s)%s", result.winner,
                     loaded.detail or ctx.model_config.model, result.seconds, loaded.nbytes / 1e6, result.gbps,
                     "; before it: " + "; ".join(f"{n}: {why}" for n, why in skipped) if skipped else "")
            return result
        raise StrategyMiss("no load strategy could load the model: "
                           + "; ".join(f"{n}: {why}" for n, why in skipped))


# -- files: the mount, a local directory, an HF-cache snapshot --------------------------------

class FileLoader(DefaultModelLoader):
    """vLLM's default loader reading the safetensors of ``root`` with :func:`iter_weights`."""

    def __init__(self, load_config: LoadConfig, root: Path) -> None:
        super().__init__(load_config)
        self.root = root
        self.stats = ReadStats()

    def _get_weights_iterator(self, source: DefaultModelLoader.Source):
        _, files, use_safetensors, _ = self._prepare_weights(
            str(self.root), source.subfolder, None, source.fall_back_to_pt, source.allow_patterns_overrides)
        if not use_safetensors:
            raise StrategyMiss(f"{self.root} has no safetensors files")
        if source.is_unused_weight is not None:
            files = filter_safetensors_files_by_weight_name(files, source.is_unused_weight)
        if self.counter_before_loading_weights == 0.0:
            self.counter_before_loading_weights = time.perf_counter()
        weights = iter_weights([Path(f) for f in sorted(files)], self.stats)
        return ((source.prefix + name, tensor) for name, tensor in weights)


def has_safetensors(path: Path) -> bool:
    """True when ``path`` holds safetensors weights that all exist (index entries included)."""
    try:
        files = list(path.glob("*.safetensors"))
    except OSError:
        return False
    return bool(files) and all(f.exists() for f in files)


def load_files(model: nn.Module, ctx: LoadContext, root: Path) -> Loaded:
    loader = FileLoader(ctx.load_config, root)
    loader.load_weights(model, ctx.model_config)
    return Loaded(loader.stats.total, f"{root} ({loader.stats.summary()})")


class FilesStrategy:
    """The model directory vLLM was given: an mxfs mount, the server's shared cache, a local dir."""

    name = "files"

    def is_available(self, ctx: LoadContext) -> bool:
        return ctx.resolved is not None and has_safetensors(ctx.resolved.path)

    def load(self, model: nn.Module, ctx: LoadContext) -> Loaded:
        assert ctx.resolved is not None
        return load_files(model, ctx, ctx.resolved.path)


class DownloadStrategy:
    """``MODEL_EXPRESS_NO_SHARED_STORAGE=1``: stream the files from the server into the local HF cache.

    ``mxfs model download``'s code: resumable from ``.incomplete`` files, every file verified
    before it is published, the snapshot visible only once complete.
    """

    name = "download"

    def is_available(self, ctx: LoadContext) -> bool:
        return envs.flag(envs.MODEL_EXPRESS_NO_SHARED_STORAGE) and bool(ctx.server) and bool(self._name(ctx))

    @staticmethod
    def _name(ctx: LoadContext) -> str | None:
        if ctx.resolved is not None and ctx.resolved.name:
            return ctx.resolved.name
        model = ctx.model_config.model
        return model if model.count("/") == 1 and not model.startswith(("/", ".")) else None

    def load(self, model: nn.Module, ctx: LoadContext) -> Loaded:
        from mxfs.download import download_model

        name = self._name(ctx)
        revision = (ctx.resolved.revision if ctx.resolved else None) or ctx.model_config.revision or ""
        cache = envs.hf_hub_cache()
        start = time.perf_counter()
        snapshot = download_model(ctx.server, name, revision, cache)
        took = time.perf_counter() - start
        log.info("mx: %s is in the local HF cache %s (download %.2fs)", name, snapshot, took)
        loaded = load_files(model, ctx, snapshot)
        return Loaded(loaded.nbytes, f"{name} downloaded from {ctx.server} in {took:.2f}s, then {loaded.detail}")


class ModelStreamerStrategy:
    """``MX_MODEL_URI``: runai-model-streamer reads the safetensors straight into tensors.

    ``s3://``, ``gs://``, ``az://`` (the stores' own credentials and endpoints: ``AWS_*``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_*``), an absolute path, or an HF id in the HF
    cache. ``RUNAI_STREAMER_CONCURRENCY`` and ``RUNAI_STREAMER_MEMORY_LIMIT`` tune it.
    """

    name = "model-streamer"

    def is_available(self, ctx: LoadContext) -> bool:
        if not ctx.uri:
            return False
        try:
            import runai_model_streamer  # noqa: F401
        except ImportError:
            log.info("mx: MX_MODEL_URI is set but runai-model-streamer is not installed")
            return False
        return True

    @staticmethod
    def location(uri: str, revision: str | None) -> str:
        """What runai-model-streamer reads: the URI itself, a directory, or an HF-cache snapshot."""
        if uri.startswith(OBJECT_SCHEMES):
            return uri.rstrip("/")
        if uri.startswith("/"):
            if not Path(uri).is_dir():
                raise StrategyMiss(f"MX_MODEL_URI {uri} is not a directory")
            return uri
        snap = hf_snapshot(uri, revision)
        if snap is None:
            raise StrategyMiss(f"MX_MODEL_URI {uri!r} is not s3://, gs://, az://, an absolute path, "
                               f"or an HF id in {envs.hf_hub_cache()}")
        return str(snap)

    def load(self, model: nn.Module, ctx: LoadContext) -> Loaded:
        from vllm.model_executor.model_loader.runai_streamer_loader import RunaiModelStreamerLoader

        where = self.location(ctx.uri or "", ctx.model_config.revision)
        streamer = RunaiModelStreamerLoader(dataclasses.replace(ctx.load_config, load_format="runai_streamer"))
        nbytes = 0

        def counted():
            nonlocal nbytes
            for name, tensor in streamer._get_weights_iterator(where, ctx.model_config.revision):
                nbytes += tensor.numel() * tensor.element_size()
                yield name, tensor

        loaded = model.load_weights(counted())
        params = {n for n, _ in model.named_parameters()}
        if loaded is not None and ctx.model_config.quantization is None and params - set(loaded):
            missing = sorted(params - set(loaded))
            raise StrategyMiss(f"{where} lacks {len(missing)} weights (e.g. {missing[:3]})")
        return Loaded(nbytes, f"{where} with runai-model-streamer")


class DefaultStrategy:
    """vLLM's own safetensors loader on whatever ``model`` names (local path or HF id)."""

    name = "default"

    def is_available(self, ctx: LoadContext) -> bool:
        return True

    def load(self, model: nn.Module, ctx: LoadContext) -> Loaded:
        DefaultModelLoader(ctx.load_config).load_weights(model, ctx.model_config)
        nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()
                     if isinstance(t, torch.Tensor))
        return Loaded(nbytes, f"{ctx.model_config.model} with vLLM's default loader")
