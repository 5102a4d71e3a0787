"""The ``mx`` loader's P2P side: pull a source's final tensors, and serve as a source after the load.

Kept off the load's critical path: a worker asks the registry for READY sources (one small
RPC) before it starts a NIXL agent; with none, nothing NIXL happens until the model is
loaded. Serving (agent start, registration, per-tensor checksums, publishing, heartbeats)
runs in a background thread once vLLM's post-processing is done. What moves is the model's
state after post-processing (:mod:`mxfs.vllm.final_state`).
"""

from __future__ import annotations

import logging
import threading

import torch

from mxfs import envs
from mxfs.errors import MxfsError
from mxfs.vllm.strategies import LoadContext, Loaded, StrategyMiss
from mxfs.weight_sources.agent import nixl_available
from mxfs.weight_sources.client import SourceClient
from mxfs.weight_sources.errors import NoSource, P2PError
from mxfs.weight_sources.model import SourceIdentity
from mxfs.weight_sources.peer import Peer

log = logging.getLogger(__name__)
_LIVE: list[Peer] = []  # sources stay alive (and heartbeat) for the life of the process


def p2p_enabled(ctx: LoadContext) -> bool:
    return ctx.identity is not None and bool(ctx.server) and envs.flag(envs.MX_P2P) and nixl_available()


def backends() -> tuple[str, ...]:
    return tuple(b.strip() for b in (envs.MX_NIXL_BACKENDS.get() or "UCX").split(",") if b.strip())


class P2PPull:
    """READ a READY source's final tensors (same identity) into ours, every tensor verified."""

    name = "p2p"

    def __init__(self) -> None:
        self.peer: Peer | None = None  # the agent that pulled (it then serves the same tensors)
        self.checksums: dict[str, bytes] = {}

    def find(self, ctx: LoadContext) -> SourceClient:
        """A registry client when a READY source of our identity exists (one RPC), else StrategyMiss."""
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
        return client

    def pull(self, client: SourceClient, ctx: LoadContext, tensors: dict[str, torch.Tensor]) -> Loaded:
        """Register ``tensors`` and fill them from a source; on failure they hold partial data."""
        assert ctx.identity is not None
        if any(t.is_meta for t in tensors.values()):
            client.close()
            raise StrategyMiss("the model has meta tensors")
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
            if isinstance(exc, NoSource):
                raise StrategyMiss(str(exc)) from exc
            raise
        self.peer, self.checksums = peer, stats.checksums
        return Loaded(stats.nbytes, f"{stats.tensors} tensors over NIXL from source {stats.source_id}")

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None


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
