"""Remote origins (Hugging Face, object stores): metadata first, bytes by ranged reads.

A remote origin lists a snapshot's files (path, size and whatever digest the origin
publishes) without moving weight bytes, and reads byte ranges pinned to that snapshot
(an HF commit, or the object versions/ETags the listing saw). It never knows per-block
hashes up front: the server's model cache (``mxfs.server.model_cache``) hydrates the
files, hashes them and completes the manifest; node daemons with their own credentials
may then read blocks straight from the origin (``mxfs.fetch.origin.OriginTier``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

from mxfs.errors import InvalidModelName, SourceError


class OriginUnavailable(SourceError):
    """The origin cannot be reached, or failed mid-transfer (retry later)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file as the origin describes it, before any byte is read."""

    path: str
    size: int
    sha256: str | None = None  # published content digest (HF LFS), verified after download
    git_sha1: str | None = None  # git blob id (HF non-LFS files), verified after download
    md5: str | None = None  # single-part S3 ETag / GCS md5, verified after download
    etag: str = ""  # version pin checked on every ranged read


@dataclass(frozen=True)
class Snapshot:
    """A pinned model snapshot at a remote origin; ``revision`` is 40-hex."""

    name: str
    revision: str
    files: tuple[RemoteFile, ...]
    origin: str
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @cached_property
    def by_path(self) -> dict[str, RemoteFile]:
        return {f.path: f for f in self.files}

    def file(self, path: str) -> RemoteFile:
        try:
            return self.by_path[path]
        except KeyError:
            raise InvalidModelName(f"{path!r} is not a file of {self.name}@{self.revision}") from None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@runtime_checkable
class RemoteSource(Protocol):
    """Sync, thread-safe access to one remote origin (credentials stay inside it)."""

    #: identity recorded in manifests (never contains credentials)
    label: str
    #: provider kind: ``hf``, ``s3``, ``gs`` or ``az``
    provider: str

    def has(self, name: str) -> bool: ...

    def list_models(self) -> list[str]: ...

    def snapshot(self, name: str, revision: str) -> Snapshot:
        """Resolve a branch/tag/commit (or ``main``) to a pinned snapshot (metadata only)."""
        ...

    def read(self, snapshot: Snapshot, path: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` of ``path`` in ``snapshot``, or raise."""
        ...


def listing_revision(files: list[RemoteFile] | tuple[RemoteFile, ...]) -> str:
    """A commit-shaped (40-hex) revision of an object listing: paths, sizes and ETags."""
    h = hashlib.sha1()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.size}\0{f.etag}\n".encode())
    return h.hexdigest()


def check_range(snapshot: Snapshot, path: str, offset: int, length: int) -> RemoteFile:
    f = snapshot.file(path)
    if offset < 0 or length < 0 or offset + length > f.size:
        raise ValueError(f"range {offset}+{length} outside {path} ({f.size} bytes)")
    return f
