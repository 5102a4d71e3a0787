"""Typed outcomes of a P2P load: an expected miss, a rejected source, a failed transfer."""

from __future__ import annotations

from mxfs.errors import ModelNotFound, MxfsError


class P2PError(MxfsError):
    """Base class of P2P failures; every one of them means "load from files instead"."""


class NoSource(P2PError):
    """No READY source with a matching identity exists (the expected miss)."""


class SourceRejected(P2PError):
    """A source's tensors do not match ours (names, dtypes, shapes, sizes or checksums)."""


class TransferFailed(P2PError):
    """The NIXL transfer failed or timed out (e.g. the source died mid-transfer)."""


class SourceGone(P2PError, ModelNotFound):
    """The registry no longer knows the source (reaped or unpublished); NOT_FOUND on the wire."""
