"""Plain dataclasses describing a model snapshot; protobuf stays at the rpc edge."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from mxfs.errors import InvalidModelName, ManifestError
from mxfs.manifest import hashing


class BlockKey(NamedTuple):
    """Content address of one block: file digest, block size and index."""

    sha256: str
    block_size: int
    index: int

    def __str__(self) -> str:
        return f"{self.sha256[:12]}/{self.block_size}/{self.index}"


@dataclass(frozen=True)
class TensorInfo:
    """One safetensors tensor; ``begin``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class FileEntry:
    """One file of a model: size, digest, per-block digests and tensor index.

    ``sha256`` is the file's content id (every cache is keyed by it). It is the real
    digest of the bytes unless ``digest_verified`` is False: then it is a stable id of an
    origin object version (its bytes are checked block by block only). A *lazy* entry
    (``block_hashes`` empty, size > 0) is a remote file the server has not read yet: its
    block hashes come from the server on demand (``GetBlockHashes``).
    """

    path: str
    size: int
    sha256: str
    block_hashes: tuple[bytes, ...] = ()
    tensors: tuple[TensorInfo, ...] = ()
    digest_verified: bool = True

    @property
    def lazy(self) -> bool:
        """True when the block hashes are not in the manifest (asked for on demand)."""
        return self.size > 0 and not self.block_hashes

    def block_count(self, block_size: int) -> int:
        return (self.size + block_size - 1) // block_size

    def block_span(self, index: int, block_size: int) -> tuple[int, int]:
        """(offset, length) of block ``index``; the last block may be short."""
        if not 0 <= index < self.block_count(block_size):
            raise IndexError(f"block {index} out of range for {self.path}")
        start = index * block_size
        return start, min(block_size, self.size - start)

    def blocks_for(self, offset: int, length: int, block_size: int) -> range:
        """Indices of the blocks that cover ``[offset, offset+length)`` (clipped to the file)."""
        end = min(self.size, offset + length)
        if length <= 0 or offset >= end:
            return range(0)
        return range(offset // block_size, (end - 1) // block_size + 1)

    def key(self, index: int, block_size: int) -> BlockKey:
        return BlockKey(self.sha256, block_size, index)


@dataclass(frozen=True)
class Manifest:
    """A model snapshot: (name, resolved revision), its block size and files."""

    name: str
    revision: str
    block_size: int
    files: tuple[FileEntry, ...]
    origin: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    #: algorithm of every ``block_hashes`` digest (``mxfs.manifest.hashing``)
    block_hash: str = hashing.LEGACY

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "block_hash", hashing.check_algorithm(self.block_hash))
        except ValueError as exc:
            raise ManifestError(str(exc)) from None

    @cached_property
    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def total_blocks(self) -> int:
        return sum(f.block_count(self.block_size) for f in self.files)

    def file(self, path: str) -> FileEntry:
        try:
            return self.by_path[path]
        except KeyError:
            raise InvalidModelName(f"{path!r} is not a file of {self.name}@{self.revision}") from None

    # -- persistence (daemon and server keep manifests on disk as JSON) --------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "revision": self.revision,
                "block_size": self.block_size,
                "origin": self.origin,
                "block_hash": self.block_hash,
                "files": [
                    {
                        "path": f.path,
                        "size": f.size,
                        "sha256": f.sha256,
                        "block_hashes": [h.hex() for h in f.block_hashes],
                        "tensors": [
                            [t.name, t.dtype, list(t.shape), t.begin, t.end] for t in f.tensors
                        ],
                        **({} if f.digest_verified else {"digest_verified": False}),
                    }
                    for f in self.files
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            doc: dict[str, Any] = json.loads(text)
            files = tuple(
                FileEntry(
                    path=f["path"],
                    size=int(f["size"]),
                    sha256=f["sha256"],
                    block_hashes=tuple(bytes.fromhex(h) for h in f["block_hashes"]),
                    tensors=tuple(
                        TensorInfo(n, d, tuple(int(x) for x in s), int(b), int(e))
                        for n, d, s, b, e in f["tensors"]
                    ),
                    digest_verified=bool(f.get("digest_verified", True)),
                )
                for f in doc["files"]
            )
            return cls(doc["name"], doc["revision"], int(doc["block_size"]), files, doc["origin"],
                       block_hash=doc.get("block_hash", hashing.LEGACY))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"unreadable manifest: {exc}") from exc
