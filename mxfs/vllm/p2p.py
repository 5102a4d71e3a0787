"""The ``mx`` loader's P2P side: pull from a READY source, and serve as a source after the load.

Kept off the load's critical path: a worker asks the registry for READY sources (one small
RPC) before it starts a NIXL agent; with none, nothing NIXL happens until the model is
loaded. Serving (agent start, registration, per-tensor checksums, publishing, heartbeats)
runs in a background thread once vLLM's post-processing is done. The only work left on the
critical path is a BLAKE3 fingerprint of the loaded tensors (many GB/s, threads outside
the GIL), compared after post-processing: a tensor changed in place is never served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import torch
from torch import nn

from mxfs import envs
from mxfs.errors import MxfsError
from mxfs.vllm.strategies import LoadContext, Loaded, StrategyMiss
from mxfs.weight_sources.agent import nixl_available
from mxfs.weight_sources.checksum import checksum
from mxfs.weight_sources.client import SourceClient
from mxfs.weight_sources.errors import NoSource, P2PError
from mxfs.weight_sources.model import SourceIdentity
from mxfs.weight_sources.peer import Peer

log = logging.getLogger(__name__)
_LIVE: list[Peer] = []  # sources stay alive (and heartbeat) for the life of the process


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, as plain tensors over the same storage."""
    out = {name: p.data for name, p in model.named_parameters()}
    out.update({name: b.data for name, b in model.named_buffers()})
    return out


def p2p_enabled(ctx: LoadContext) -> bool:
    return ctx.identity is not None and bool(ctx.server) and envs.flag(envs.MX_P2P) and nixl_available()


def backends() -> tuple[str, ...]:
    return tuple(b.strip() for b in (envs.MX_NIXL_BACKENDS.get() or "UCX").split(",") if b.strip())


class P2PStrategy:
    """READ every parameter and buffer from a READY source with our exact identity, verified."""

    name = "p2p"

    def __init__(self) -> None:
        self.peer: Peer | None = None  # the agent that pulled (it then serves the same tensors)
        self.checksums: dict[str, bytes] = {}

    def is_available(self, ctx: LoadContext) -> bool:
        return p2p_enabled(ctx)

    def load(self, model: nn.Module, ctx: LoadContext) -> Loaded:
        assert ctx.identity is not None and ctx.server
        client = SourceClient(ctx.server)
        try:
            ready = client.list(ctx.identity)
        except MxfsError as exc:
            client.close()
            raise StrategyMiss(f"source registry unavailable ({exc})") from exc
        if not ready:
            client.close()
            raise StrategyMiss("no READY source for this identity")
        tensors = model_tensors(model)
        if any(t.is_meta for t in tensors.values()):
            client.close()
            raise StrategyMiss("the model has meta tensors")
        buffers = {n: b.data.clone() for n, b in model.named_buffers()}  # files never rewrite these
        try:
            peer = Peer(client, ctx.identity, backends())
        except P2PError as exc:
            client.close()
            raise StrategyMiss(f"cannot start a NIXL agent ({exc})") from exc
        try:
            peer.register(tensors)
            stats = peer.pull_any(int(envs.MX_P2P_MAX_TRIES.get() or 3), float(envs.MX_P2P_TIMEOUT_S.get() or 120))
        except (P2PError, MxfsError) as exc:
            peer.close()
            for name, saved in buffers.items():
                tensors[name].copy_(saved)
            if isinstance(exc, NoSource):
                raise StrategyMiss(str(exc)) from exc
            raise
        self.peer, self.checksums = peer, stats.checksums
        return Loaded(stats.nbytes, f"{stats.tensors} tensors over NIXL from source {stats.source_id}")


def fingerprint(t: torch.Tensor) -> bytes:
    """A digest of a tensor's bytes: BLAKE3 (threaded) on the CPU, the device checksum elsewhere."""
    if t.device.type != "cpu":
        return checksum(t)
    import blake3

    raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return blake3.blake3(memoryview(raw), max_threads=blake3.blake3.AUTO).digest()


def fingerprints(tensors: Mapping[str, torch.Tensor]) -> dict[str, bytes]:
    return {name: fingerprint(t) for name, t in tensors.items()}


class SourceServer:
    """After the load, serve the loaded tensors as a P2P source from a background thread."""

    def __init__(self, ctx: LoadContext) -> None:
        self.ctx = ctx
        self.thread: threading.Thread | None = None

    def serve(self, tensors: dict[str, torch.Tensor], peer: Peer | None) -> None:
        """Start serving ``tensors`` (with ``peer`` when the pull already made one)."""
        self.thread = threading.Thread(target=self._run, args=(tensors, peer), name="mx-p2p-publish", daemon=True)
        self.thread.start()

    def _run(self, tensors: dict[str, torch.Tensor], peer: Peer | None) -> None:
        identity: SourceIdentity = self.ctx.identity
        try:
            if peer is None:
                peer = Peer(SourceClient(self.ctx.server), identity, backends())
            peer.publish(tensors)
        except (P2PError, MxfsError) as exc:
            log.warning("mx: could not publish as a source: %s", exc)
            if peer is not None:
                peer.close()
            return
        _LIVE.append(peer)
