"""The node daemon's mxfs mount as the CSI plugin sees it: health and model paths."""

from __future__ import annotations

import os
from pathlib import Path

from mxfs import nodectl
from mxfs.errors import InvalidModelName, ModelNotFound, MxfsError
from mxfs.manifest.names import hub_folder, is_commit
from mxfs_csi import mounts
from mxfs_csi.status import CsiError, from_os_error, invalid_argument, not_found, unavailable
from mxfs_csi.volume import ModelVolume

RESOLVE_TIMEOUT_S = 60.0  # a first resolve may ask the server (and it the Hub)


class NodeMount:
    """Read-only view of the node daemon's mount at ``mountpoint``."""

    def __init__(self, mountpoint: str | os.PathLike[str]) -> None:
        self.mountpoint = Path(os.path.abspath(mountpoint))

    def ready(self) -> bool:
        """True when the mount serves; False while it is not mounted yet.

        Raises UNAVAILABLE when the mount is there but its daemon no longer answers.
        """
        if mounts.mount_at(self.mountpoint) is None:
            return False
        try:
            os.statvfs(self.mountpoint)  # always a round trip: stat may come from the attr cache
        except OSError as exc:
            message = f"node mount {self.mountpoint} is not serving: {exc.strerror}"
            raise unavailable(message) from exc
        return True

    def require_ready(self) -> None:
        """Raise UNAVAILABLE unless the mount serves."""
        if not self.ready():
            raise unavailable(f"node mount {self.mountpoint} is not mounted yet")

    def model_dir(self, volume: ModelVolume) -> Path:
        """The directory holding ``volume``'s files, resolved by the daemon on lookup.

        A plain ``org/name`` is the model's own folder; a pinned revision is its
        Hugging Face snapshot folder (a branch or tag is read from ``refs/``).
        """
        self.require_ready()
        if volume.revision is None:
            path = self.mountpoint / volume.name
        else:
            repo = self.mountpoint / "hub" / hub_folder(volume.name)
            commit = volume.revision
            if not is_commit(commit):
                commit = self._resolve(volume) or self._read_ref(repo / "refs" / volume.revision, volume)
            path = repo / "snapshots" / commit
        self._lookup(path, volume)
        return path

    def _resolve(self, volume: ModelVolume) -> str | None:
        """The commit the node daemon resolves a branch or tag to, through its control
        socket (a ref shows in the mount only once the daemon resolved it). None when the
        mount has no daemon to ask (then ``refs/`` is read as it is)."""
        assert volume.revision is not None
        try:
            commit = nodectl.resolve(self.mountpoint, volume.name, volume.revision, RESOLVE_TIMEOUT_S)
        except nodectl.NotAnMxfsMount:
            return None
        except ModelNotFound as exc:
            raise not_found(f"model {volume}: {exc}") from exc
        except InvalidModelName as exc:
            raise invalid_argument(f"model {volume}: {exc}") from exc
        except MxfsError as exc:
            raise unavailable(f"model {volume}: {exc}") from exc
        if not is_commit(commit):
            raise unavailable(f"model {volume}: the node daemon answered {commit!r}, not a commit")
        return commit

    def _lookup(self, path: Path, volume: ModelVolume) -> None:
        try:
            is_dir = path.is_dir()
        except OSError as exc:
            raise self._error(exc, volume) from exc
        if not is_dir:
            raise not_found(f"model {volume} is not known to the mxfs server")

    def _read_ref(self, ref: Path, volume: ModelVolume) -> str:
        try:
            commit = ref.read_text().strip()
        except OSError as exc:
            raise self._error(exc, volume) from exc
        if not is_commit(commit):
            raise not_found(f"model {volume}: ref {ref.name} does not name a commit")
        return commit

    def _error(self, exc: OSError, volume: ModelVolume) -> CsiError:
        return from_os_error(exc, f"resolving model {volume} in {self.mountpoint}")
