"""One worker's side of P2P: pull from a compatible source, then serve as a source itself."""

from __future__ import annotations

import atexit
import logging
import random
import socket
import threading
import uuid
from collections.abc import Mapping

import torch

from mxfs.errors import MxfsError
from mxfs.weight_sources.agent import NixlAgent, mem_type
from mxfs.weight_sources.client import SourceClient
from mxfs.weight_sources.errors import NoSource, P2PError, SourceGone, SourceRejected
from mxfs.weight_sources.model import SourceIdentity, Status, TensorDesc
from mxfs.weight_sources.transfer import PullStats, describe, pull

log = logging.getLogger(__name__)


class Peer:
    """A NIXL agent named after a fresh per-process source id, plus its registry client.

    A restarted worker gets a new id, so it can never pick its own dead entry.
    """

    def __init__(self, client: SourceClient, identity: SourceIdentity, backends: tuple[str, ...] = ("UCX",)) -> None:
        self.client = client
        self.identity = identity
        self.source_id = uuid.uuid4().hex
        self.agent = NixlAgent(f"mx-{self.source_id}", backends)
        self._tensors: dict[str, torch.Tensor] = {}
        self._published: list[TensorDesc] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def register(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Register the tensors to pull into (and to serve later) with NIXL."""
        self._tensors = dict(tensors)
        self.agent.deregister_all()
        nbytes = self.agent.register(self._tensors.values())
        log.debug("registered %d tensors (%d bytes of storage) with NIXL", len(self._tensors), nbytes)

    def candidates(self) -> list[str]:
        """READY sources of our identity, not ourselves, in random order (spreads the load)."""
        found = [s.source_id for s in self.client.list(self.identity) if s.source_id != self.source_id]
        random.shuffle(found)
        return found

    def pull_any(self, max_tries: int, timeout_s: float) -> PullStats:
        """Try up to ``max_tries`` sources; the first verified pull wins. NoSource if none works."""
        try:
            candidates = self.candidates()
        except MxfsError as exc:
            raise NoSource(f"source registry unavailable: {exc}") from exc
        if not candidates:
            raise NoSource("no READY source for this identity")
        errors = []
        for source_id in candidates[:max_tries]:
            try:
                meta = self.client.metadata(source_id)
                if not self.identity.accepts(meta.info.identity) or meta.info.status is not Status.READY:
                    raise SourceRejected(f"source {source_id} is {meta.info.status.name} with another identity"
                                         if not self.identity.accepts(meta.info.identity) else
                                         f"source {source_id} is {meta.info.status.name}")
                return pull(self.agent, meta, self._tensors, timeout_s)
            except (P2PError, MxfsError) as exc:
                log.warning("source %s not used: %s: %s", source_id, type(exc).__name__, exc)
                errors.append(f"{source_id}: {exc}")
        raise NoSource(f"{len(errors)} sources tried, none usable: " + " | ".join(errors))

    def publish(self, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        """Publish ``tensors`` (default: the registered ones) as READY and start heartbeats."""
        if tensors is not None and (tensors.keys() != self._tensors.keys()
                                    or any(t is not self._tensors[n] for n, t in tensors.items())):
            self.register(tensors)
        self._published = describe(self._tensors)
        kinds = {mem_type(t) for t in self._tensors.values()} or {"DRAM"}
        if len(kinds) != 1:
            raise SourceRejected(f"cannot publish tensors in several memory types {sorted(kinds)}")
        interval = self._send(kinds.pop())
        log.info("serving as P2P source %s (%d tensors, %.1f MB)", self.source_id, len(self._published),
                 sum(d.size for d in self._published) / 1e6)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, args=(interval,), name="mx-p2p-heartbeat",
                                            daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _send(self, kind: str) -> float:
        return self.client.publish(self.identity, self.source_id, self.agent.name, self.agent.metadata(),
                                   self._published, kind, Status.READY, socket.gethostname())

    def _beat(self, interval: float) -> None:
        kind = {mem_type(t) for t in self._tensors.values()}.pop() if self._tensors else "DRAM"
        while not self._stop.wait(max(0.2, interval)):
            try:
                self.client.heartbeat(self.source_id)
            except SourceGone:
                log.warning("source %s was reaped by the server: publishing again", self.source_id)
                try:
                    self._send(kind)
                except MxfsError as exc:
                    log.warning("re-publish failed: %s", exc)
            except MxfsError as exc:
                log.warning("heartbeat failed: %s", exc)

    def close(self) -> None:
        """Stop heartbeats, unpublish (bounded), release NIXL registrations."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            try:
                self.client.unpublish(self.source_id)
            except MxfsError as exc:
                log.warning("unpublish of %s failed: %s", self.source_id, exc)
        self.agent.close()
        self.client.close()
