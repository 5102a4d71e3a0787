"""Plain dataclasses of the source registry; protobuf stays in :mod:`mxfs.weight_sources.convert`."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """Mirrors ``mxfs.p2p.v1.SourceStatus``."""

    UNSPECIFIED = 0
    PENDING = 1
    READY = 2
    DRAINING = 3
    STALE = 4


@dataclass(frozen=True)
class SourceIdentity:
    """What two workers must share before one may copy the other's weights."""

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

    def key(self) -> str:
        """A stable short key for the registry (every field counts)."""
        doc = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()[:32]

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
    """The small registry record of one source (no tensors, no agent metadata)."""

    source_id: str
    identity: SourceIdentity
    status: Status
    agent_name: str
    host: str = ""
    tensor_count: int = 0
    total_bytes: int = 0
    updated_unix: float = 0.0

    def to_json(self) -> bytes:
        doc = dataclasses.asdict(self) | {"identity": self.identity.to_json(), "status": int(self.status)}
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SourceInfo:
        doc = json.loads(raw)
        doc["identity"] = SourceIdentity.from_json(doc["identity"])
        doc["status"] = Status(doc["status"])
        return cls(**doc)


@dataclass(frozen=True)
class SourceMetadata:
    """What a target needs to read a source: its NIXL agent metadata and tensor manifest."""

    info: SourceInfo
    agent_metadata: bytes
    mem_type: str
    tensors: list[TensorDesc] = field(default_factory=list)
