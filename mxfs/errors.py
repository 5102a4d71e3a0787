"""Typed failures shared by every layer; each maps to one errno / gRPC code at the edges."""

from __future__ import annotations


class MxfsError(Exception):
    """Base class of every mxfs error."""


class InvalidModelName(MxfsError, ValueError):
    """A model name, revision or file path is malformed or tries to escape its root."""


class ModelNotFound(MxfsError, LookupError):
    """The model (or the requested revision) does not exist at the origin."""


class ManifestError(MxfsError):
    """A model's files cannot be described (e.g. a malformed safetensors header)."""


class SafetensorsHeaderError(ManifestError):
    """A safetensors header is malformed or hostile."""


class IntegrityError(MxfsError):
    """Bytes did not match their recorded hash."""


class BlockUnavailable(MxfsError):
    """A tier cannot provide a block right now (expected miss or transient failure)."""


class SourceError(MxfsError):
    """A tier failed in a way that proves the tier itself is at fault."""


class OriginDenied(MxfsError, PermissionError):
    """The origin refused our credentials (wrong key, no token, gated repository)."""
