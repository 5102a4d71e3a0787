"""The narrow interface every origin implements (sync and thread-safe)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mxfs.manifest.model import Manifest


@runtime_checkable
class Origin(Protocol):
    """A source of model snapshots.

    ``resolve`` raises ModelNotFound for models it doesn't have and InvalidModelName
    for malformed requests; ``read_range`` returns exactly ``length`` bytes or raises.
    """

    #: human-readable identity, e.g. ``local:/srv/models``
    label: str

    def has(self, name: str) -> bool:
        """Cheap check: does this origin know the model at all?"""
        ...

    def list_models(self) -> list[str]:
        """Names this origin can enumerate (may be empty for unbounded origins)."""
        ...

    def resolve(self, name: str, revision: str, block_size: int) -> Manifest:
        """Resolve ``revision`` (branch, tag or commit) and describe the snapshot."""
        ...

    def read_range(self, manifest: Manifest, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of one file of a resolved snapshot."""
        ...
