"""Plain dataclasses of the source registry; protobuf stays in :mod:`mxfs.weight_sources.convert`."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """``model_express.p2p.SourceStatus`` (same numbers on the wire).

    mxfs has no separate DRAINING value: a source that shuts down reports STALE, which is
    ModelExpress's own shutdown signal; targets never start a read from a STALE source.
    """

    UNKNOWN = 0
    INITIALIZING = 1
    READY = 2
    STALE = 3


@dataclass(frozen=True)
class SourceIdentity:
    """What two workers must share before one may copy the other's weights.

    ``rank`` and ``device`` are per worker on the wire (worker_rank, accelerator); the rest
    maps onto ``model_express.p2p.SourceIdentity``.
    """

    model: str
    revision: str
    dtype: str
    quantization: str = "none"
    tp_size: int = 1
    pp_size: int = 1
    ep_size: int = 1
    backend: str = "vllm"
    backend_version: str = ""
    rank: int = 0
    device: str = "cpu"

    def accepts(self, other: SourceIdentity) -> bool:
        """May a worker of ``self`` copy weights from ``other``?

        Every field must agree (names compare case-insensitively, as source ids do), except a
        backend version ``other`` left empty (ModelExpress's vLLM loader does not send one):
        the pull itself still checks every tensor's name, dtype, shape and checksum.
        """
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        if not theirs["backend_version"]:
            theirs["backend_version"] = mine["backend_version"]
        for name in ("model", "revision", "dtype", "quantization", "backend", "device"):
            mine[name], theirs[name] = str(mine[name]).lower(), str(theirs[name]).lower()
        return mine == theirs

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> SourceIdentity:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True)
class TensorDesc:
    """One tensor a source serves."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    size: int
    addr: int = 0
    device_id: int = 0
    checksum: bytes = b""


@dataclass(frozen=True)
class SourceInfo:
    """One worker of a source as a target sees it (no tensors, no agent metadata).

    ``source_id`` is the worker's id (unique per worker process, never reused after a
    restart); ``mx_source_id`` is the id of its identity, shared by all its replicas.
    """

    source_id: str
    identity: SourceIdentity
    status: Status
    agent_name: str
    host: str = ""
    tensor_count: int = 0
    total_bytes: int = 0
    updated_unix: float = 0.0
    mx_source_id: str = ""


@dataclass(frozen=True)
class SourceMetadata:
    """What a target needs to read a source: its NIXL agent metadata and tensor manifest."""

    info: SourceInfo
    agent_metadata: bytes
    mem_type: str
    tensors: list[TensorDesc] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerState:
    """The server's small, mutable record of one published worker rank.

    The identity and the worker's published metadata are stored once, as the bytes the
    worker sent; heartbeats rewrite only this record.
    """

    mx_source_id: str
    worker_id: str
    rank: int
    model_name: str
    status: Status
    updated_ms: int
    accelerator: str = ""
    source_load: float | None = None
    training_step: int | None = None
    layout_signature: str | None = None
    topology: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self) | {"status": int(self.status)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> WorkerState:
        doc = json.loads(raw)
        doc["status"] = Status(doc["status"]) if doc["status"] in Status._value2member_map_ else Status.UNKNOWN
        return cls(**doc)
