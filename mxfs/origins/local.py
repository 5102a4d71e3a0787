"""Local origin: every ``DIR/<org>/<name>/`` is a model, revision = content hash."""

from __future__ import annotations

import threading
from pathlib import Path

from mxfs.errors import ModelNotFound
from mxfs.fileio import pread_file
from mxfs.manifest.builder import DigestCache, build_manifest
from mxfs.manifest.model import Manifest
from mxfs.manifest.names import DEFAULT_REVISION, is_commit, validate_name, validate_relpath


class LocalOrigin:
    """Models stored as plain directories (an offline mirror or a shared volume)."""

    def __init__(self, models_dir: Path, state_dir: Path | None = None) -> None:
        self.root = Path(models_dir).resolve()
        self.label = f"local:{self.root}"
        self._digests = DigestCache(state_dir / "local-digests.json" if state_dir else None)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _dir(self, name: str) -> Path:
        validate_name(name)
        path = (self.root / name).resolve()
        if path.parent.parent != self.root:
            raise ModelNotFound(f"{name} escapes the models directory")
        return path

    def has(self, name: str) -> bool:
        return self._dir(name).is_dir()

    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for org in sorted(self.root.iterdir()):
            if org.is_dir() and not org.name.startswith("."):
                names += [f"{org.name}/{m.name}" for m in sorted(org.iterdir())
                          if m.is_dir() and not m.name.startswith(".")]
        return names

    def resolve(self, name: str, revision: str, block_size: int) -> Manifest:
        root = self._dir(name)
        if not root.is_dir():
            raise ModelNotFound(f"model {name} not found in {self.root}")
        with self._model_lock(name):
            manifest = build_manifest(name, root, block_size, self.label, self._digests)
        if revision and revision != DEFAULT_REVISION and revision != manifest.revision:
            if is_commit(revision):
                raise ModelNotFound(
                    f"revision {revision} of {name} is not available "
                    f"(the local origin holds {manifest.revision})"
                )
            raise ModelNotFound(f"revision {revision!r} of {name} not found (local origin has only main)")
        return manifest

    def local_file(self, manifest: Manifest, path: str) -> Path:
        """The origin file itself, for zero-copy serving (``sendfile``)."""
        manifest.file(validate_relpath(path))
        return self._dir(manifest.name) / path

    def read_range(self, manifest: Manifest, path: str, offset: int, length: int) -> bytes:
        entry = manifest.file(validate_relpath(path))
        if offset < 0 or length < 0 or offset + length > entry.size:
            raise ValueError(f"range {offset}+{length} outside {path} ({entry.size} bytes)")
        data = pread_file(self._dir(manifest.name) / path, offset, length)
        if len(data) != length:
            raise ModelNotFound(f"{manifest.name}/{path} shrank at the origin")
        return data

    def _model_lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())
