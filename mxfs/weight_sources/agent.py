"""A NIXL agent per worker: register tensors, exchange metadata, READ remote tensors.

The listener thread stays off (it binds every interface): agent metadata travels through
the mxfs server's registry instead. UCX is the default backend; tests keep it on loopback
with ``UCX_NET_DEVICES=lo``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mxfs.weight_sources.errors import TransferFailed

log = logging.getLogger(__name__)

REGISTER_BATCH = 256          # regions per register_memory call
XFER_BATCH_BYTES = 256 << 20  # bytes per transfer request
XFER_BATCH_DESCS = 1024       # descriptors per transfer request
MAX_INFLIGHT = 4              # transfer requests posted at once


def nixl_errors() -> tuple[type[BaseException], ...]:
    """The exception types the NIXL bindings raise."""
    from nixl import _bindings as b

    return tuple(getattr(b, n) for n in dir(b) if n.startswith("nixl") and n.endswith("Error"))


def nixl_available() -> bool:
    try:
        from nixl._api import nixl_agent  # noqa: F401
    except ImportError:
        return False
    return True


def mem_type(t: torch.Tensor) -> str:
    return "VRAM" if t.device.type == "cuda" else "DRAM"


def device_id(t: torch.Tensor) -> int:
    return (t.device.index or 0) if t.device.type == "cuda" else 0


@dataclass(frozen=True)
class Region:
    addr: int
    length: int
    device_id: int


def storage_regions(tensors: Iterable[torch.Tensor]) -> dict[str, list[Region]]:
    """The distinct storages behind ``tensors``, by memory type (each storage once)."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, list[Region]] = {}
    for t in tensors:
        storage = t.untyped_storage()
        addr, length, kind = storage.data_ptr(), storage.nbytes(), mem_type(t)
        if length == 0 or (kind, addr) in seen:
            continue
        seen.add((kind, addr))
        out.setdefault(kind, []).append(Region(addr, length, device_id(t)))
    return out


class NixlAgent:
    """One NIXL agent (UCX by default) owning this worker's registrations."""

    def __init__(self, name: str, backends: Sequence[str] = ("UCX",)) -> None:
        from nixl._api import nixl_agent, nixl_agent_config

        cfg = nixl_agent_config(enable_prog_thread=True, enable_listen_thread=False, backends=list(backends))
        self.name = name
        self._agent = nixl_agent(name, cfg)
        missing = [b for b in backends if b not in self._agent.backends]
        if missing:
            raise TransferFailed(f"NIXL backends {missing} are not available (have {self._agent.plugin_list})")
        self._errors = nixl_errors()
        self._registered: list = []
        self._remotes: set[str] = set()

    def register(self, tensors: Iterable[torch.Tensor]) -> int:
        """Register every distinct storage behind ``tensors`` (batched); returns bytes registered."""
        total = 0
        for kind, regions in storage_regions(tensors).items():
            for i in range(0, len(regions), REGISTER_BATCH):
                batch = regions[i : i + REGISTER_BATCH]
                descs = [(r.addr, r.length, r.device_id, "") for r in batch]
                try:
                    self._registered.append(self._agent.register_memory(descs, kind))
                except self._errors as exc:
                    raise TransferFailed(f"NIXL register_memory failed: {exc!r}") from exc
                total += sum(r.length for r in batch)
        return total

    def metadata(self) -> bytes:
        return self._agent.get_agent_metadata()

    def add_remote(self, metadata: bytes, expected_name: str = "") -> str:
        """Load a remote agent's metadata (once per name: a known agent is reused)."""
        if expected_name and expected_name in self._remotes:
            return expected_name
        try:
            name = self._agent.add_remote_agent(metadata)
        except self._errors as exc:
            raise TransferFailed(f"NIXL add_remote_agent failed: {exc!r}") from exc
        name = name.decode() if isinstance(name, bytes) else name
        self._remotes.add(name)
        return name

    def remove_remote(self, name: str) -> None:
        if name in self._remotes:
            self._remotes.discard(name)
            try:
                self._agent.remove_remote_agent(name)
            except self._errors as exc:
                log.debug("remove_remote_agent %s: %r", name, exc)

    def _batches(self, pairs: Sequence[tuple[Region, Region]]) -> list[tuple[np.ndarray, np.ndarray]]:
        out, cur, size = [], [], 0
        for pair in pairs:
            if cur and (size + pair[0].length > XFER_BATCH_BYTES or len(cur) >= XFER_BATCH_DESCS):
                out.append(cur)
                cur, size = [], 0
            cur.append(pair)
            size += pair[0].length
        if cur:
            out.append(cur)
        return [(np.array([(a.addr, a.length, a.device_id) for a, _ in b], dtype=np.uint64),
                 np.array([(r.addr, r.length, r.device_id) for _, r in b], dtype=np.uint64)) for b in out]

    def read(self, remote: str, pairs: Sequence[tuple[Region, Region]], local_mem: str, remote_mem: str,
             timeout_s: float) -> None:
        """READ each remote region into its local region; TransferFailed on error or time-out."""
        deadline = time.monotonic() + timeout_s
        pending = self._batches(pairs)
        inflight: list = []
        try:
            while pending or inflight:
                while pending and len(inflight) < MAX_INFLIGHT:
                    local, far = pending.pop(0)
                    handle = self._agent.initialize_xfer(
                        "READ", self._agent.get_xfer_descs(local, local_mem),
                        self._agent.get_xfer_descs(far, remote_mem), remote)
                    inflight.append(handle)
                    if self._agent.transfer(handle) == "ERR":
                        raise TransferFailed(f"NIXL could not post a READ from {remote}")
                still = []
                for handle in inflight:
                    state = self._agent.check_xfer_state(handle)
                    if state == "ERR":
                        raise TransferFailed(f"NIXL READ from {remote} failed")
                    if state == "DONE":
                        self._agent.release_xfer_handle(handle)
                    else:
                        still.append(handle)
                inflight = still
                if inflight:
                    if time.monotonic() > deadline:
                        raise TransferFailed(f"NIXL READ from {remote} timed out after {timeout_s:.0f}s")
                    time.sleep(0.0002)
        except self._errors as exc:
            raise TransferFailed(f"NIXL READ from {remote}: {exc!r}") from exc
        finally:
            for handle in inflight:
                try:
                    self._agent.release_xfer_handle(handle)
                except self._errors as exc:
                    log.warning("could not release a NIXL transfer from %s: %r", remote, exc)

    def deregister_all(self) -> None:
        for reg in self._registered:
            try:
                self._agent.deregister_memory(reg)
            except self._errors as exc:
                log.debug("deregister_memory: %r", exc)
        self._registered.clear()

    def close(self) -> None:
        for name in list(self._remotes):
            self.remove_remote(name)
        self.deregister_all()
