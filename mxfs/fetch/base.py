"""The interface of one tier of the fetch chain."""

from __future__ import annotations

from typing import Protocol

from mxfs.manifest.model import FileEntry, Manifest


class Tier(Protocol):
    """A remote place that can return one block's bytes.

    ``fetch`` raises BlockUnavailable for an expected miss or a transient failure and
    SourceError when the tier itself is broken. The chain verifies what it returns.
    """

    name: str

    async def fetch(self, manifest: Manifest, entry: FileEntry, index: int) -> bytes | bytearray:
        ...

    def quarantine(self, manifest: Manifest, entry: FileEntry, index: int) -> None:
        """Called when bytes from this tier failed their hash."""
        ...
