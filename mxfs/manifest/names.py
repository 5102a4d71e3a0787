"""Validation of model names, revisions and relative file paths (no traversal, ever)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mxfs.errors import InvalidModelName

_PART = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?$")
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,127}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


def validate_part(part: str, what: str = "model name part") -> str:
    """Check one component of ``org/name`` the way the Hugging Face Hub does."""
    if not _PART.match(part) or ".." in part or "--" in part:
        raise InvalidModelName(
            f"invalid {what} {part!r}: use letters, digits, '-', '_', '.'; "
            "no '--' or '..', max 96 characters"
        )
    return part


def validate_name(name: str) -> str:
    """Check a full model name ``org/name``."""
    parts = name.split("/")
    if len(parts) != 2:
        raise InvalidModelName(f"invalid model name {name!r}: expected 'org/name'")
    validate_part(parts[0], "organisation")
    validate_part(parts[1], "model name")
    return name


def validate_revision(revision: str) -> str:
    """Check a branch, tag or commit name (no traversal, no control characters)."""
    if not _REVISION.match(revision) or ".." in revision or revision.endswith("/"):
        raise InvalidModelName(f"invalid revision {revision!r}")
    return revision


def is_commit(revision: str) -> bool:
    """True for a resolved, commit-shaped (40 lowercase hex) revision."""
    return bool(COMMIT.match(revision))


def validate_relpath(path: str) -> str:
    """Check a file path inside a model: relative, '/'-separated, no '.', '..' or empties."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise InvalidModelName(f"invalid file path {path!r}")
    for part in path.split("/"):
        if part in ("", ".", "..") or len(part) > 255:
            raise InvalidModelName(f"invalid file path {path!r}")
    return path


@dataclass(frozen=True)
class ModelRef:
    """A model name plus the revision asked for (a branch, tag or commit)."""

    name: str
    revision: str = DEFAULT_REVISION

    @property
    def org(self) -> str:
        return self.name.split("/")[0]

    @property
    def repo(self) -> str:
        return self.name.split("/")[1]

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}"


def parse_model_ref(text: str) -> ModelRef:
    """Parse ``org/name`` or ``org/name@revision``."""
    name, _, revision = text.partition("@")
    return ModelRef(validate_name(name), validate_revision(revision or DEFAULT_REVISION))


def hub_folder(name: str) -> str:
    """The Hugging Face cache folder of a model: ``models--org--name``."""
    return "models--" + name.replace("/", "--")


def name_from_hub_folder(folder: str) -> str:
    """Inverse of :func:`hub_folder`; raises InvalidModelName for other folder names."""
    if not folder.startswith("models--"):
        raise InvalidModelName(f"not a model folder: {folder!r}")
    org, sep, repo = folder[len("models--") :].partition("--")
    if not sep:
        raise InvalidModelName(f"not a model folder: {folder!r}")
    return validate_name(f"{org}/{repo}")
