"""Where a vLLM model's files are and what mxfs knows about them (from extended attributes)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mxfs import envs

XATTR = "user.mxfs."
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<rev>[0-9a-f]{40})/?$")


def xattr(path: Path, name: str) -> str | None:
    try:
        return os.getxattr(path, XATTR + name).decode()
    except OSError:
        return None


@dataclass(frozen=True)
class ResolvedModel:
    """A local model directory; ``name``/``revision`` are known for mxfs or HF-layout dirs."""

    path: Path
    name: str | None
    revision: str | None
    mxfs: bool
    server: str | None


def hf_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """``repo_id``'s snapshot directory in the local HF cache, if it is there."""
    base = envs.hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = revision or "main"
    ref_file = base / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    snap = base / "snapshots" / commit
    return snap if snap.is_dir() else None


def _server_of(path: Path) -> str | None:
    found = envs.MODEL_EXPRESS_URL.get()
    if found:
        return found
    for candidate in (path, *path.parents):
        value = xattr(candidate, "server")
        if value:
            return value
    return None


def resolve(model: str, revision: str | None = None) -> ResolvedModel:
    """Resolve vLLM's ``model`` (a directory, an HF id in the HF cache, or ``MX_MODEL_URI``)."""
    path = Path(model)
    if not path.is_dir():
        uri = envs.MX_MODEL_URI.get()
        snap = hf_snapshot(model, revision) if "/" in model and not model.startswith("/") else None
        if snap is not None:
            path = snap
        elif uri and uri.startswith("/") and Path(uri).is_dir():
            path = Path(uri)
        else:
            raise FileNotFoundError(f"model {model!r} is neither a directory nor in the HF cache "
                                    f"{envs.hf_hub_cache()}")
    name, rev = xattr(path, "model"), xattr(path, "revision")
    if name and rev:
        return ResolvedModel(path, name, rev, True, _server_of(path))
    m = _SNAPSHOT.search(path.as_posix())
    if m:
        return ResolvedModel(path, f"{m['org']}/{m['name']}", m["rev"], False, envs.MODEL_EXPRESS_URL.get())
    return ResolvedModel(path, None, None, False, envs.MODEL_EXPRESS_URL.get())
