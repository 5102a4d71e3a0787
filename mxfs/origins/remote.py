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

    # optional: ``open_range(snapshot, path, offset, length) -> RangeBody``, the same bytes
    # received straight into the caller's buffers (HF, object stores); callers fall back to ``read``


class RangeBody(Protocol):
    """Bytes of one ranged read, taken in order into the caller's buffers; close it after use."""

    def fill(self, view: memoryview) -> None:
        """The next ``len(view)`` bytes into ``view``, or raise (``OriginUnavailable`` when the
        body ends early or the transfer fails)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> RangeBody: ...

    def __exit__(self, *exc: object) -> None: ...


class BytesBody:
    """A :class:`RangeBody` over bytes already read (origins without a streaming read)."""

    def __init__(self, data: bytes, length: int, what: str) -> None:
        if len(data) != length:
            raise OriginUnavailable(f"origin sent {len(data)} of {length} bytes of {what}")
        self._data = memoryview(data)
        self._pos = 0

    def fill(self, view: memoryview) -> None:
        end = self._pos + len(view)
        if end > len(self._data):
            raise ValueError(f"{len(view)} bytes asked, {len(self._data) - self._pos} left")
        view[:] = self._data[self._pos:end]
        self._pos = end

    def close(self) -> None:
        self._data.release()

    def __enter__(self) -> BytesBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
