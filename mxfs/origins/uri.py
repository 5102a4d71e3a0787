"""Origin URIs (the ``MX_MODEL_URI`` forms): ``s3://``, ``gs://``, ``az://``, ``hf``, ``/abs/path``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from mxfs.errors import InvalidModelName
from mxfs.manifest.names import validate_name, validate_part
from mxfs.origins.remote import RemoteSource

OBJECT_SCHEMES = ("s3", "gs", "az")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,221}[a-z0-9]$")
HELP = "use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, hf, or an absolute local path"


@dataclass(frozen=True)
class OriginUri:
    """A parsed origin location; ``str()`` gives the canonical form (never credentials)."""

    scheme: str  # s3, gs, az, hf or file
    bucket: str = ""
    prefix: str = ""

    def __str__(self) -> str:
        if self.scheme == "hf":
            return "hf"
        if self.scheme == "file":
            return self.prefix
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    def child(self, rel: str) -> OriginUri:
        prefix = f"{self.prefix}/{rel}".strip("/") if self.prefix else rel.strip("/")
        return OriginUri(self.scheme, self.bucket, prefix)


def parse_origin_uri(text: str) -> OriginUri:
    """Validate an origin URI; raises InvalidModelName with the accepted forms."""
    text = text.strip()
    if text in ("hf", "hf://", "huggingface", "hf://models"):
        return OriginUri("hf")
    if text.startswith("/"):
        path = PurePosixPath(text)
        if ".." in path.parts:
            raise InvalidModelName(f"origin path {text!r} must not contain '..'")
        return OriginUri("file", prefix=str(path))
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in OBJECT_SCHEMES:
        raise InvalidModelName(f"unsupported origin URI {text!r}: {HELP}")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidModelName(f"invalid bucket/container name {bucket!r} in {text!r}")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") or "\x00" in p or "\\" in p for p in parts):
        raise InvalidModelName(f"invalid prefix in {text!r}")
    return OriginUri(scheme, bucket, "/".join(parts))


def name_for_uri(text: str) -> str:
    """The ``org/name`` a model URI is served as: its last two path components."""
    uri = parse_origin_uri(text)
    parts = [p for p in uri.prefix.split("/") if p]
    if len(parts) < 2:
        raise InvalidModelName(f"model URI {text!r} needs at least two path components (…/ORG/NAME)")
    return validate_name(f"{validate_part(parts[-2], 'organisation')}/{validate_part(parts[-1])}")


def parse_binding(text: str) -> tuple[str, OriginUri]:
    """``ORG/NAME=URI`` (one model at one location) -> (name, uri)."""
    name, sep, uri = text.partition("=")
    if not sep:
        raise InvalidModelName(f"model binding {text!r} must look like ORG/NAME=URI")
    return validate_name(name.strip()), parse_origin_uri(uri)


def open_source(uri: OriginUri, name: str | None = None) -> RemoteSource:
    """The remote source for a parsed URI (``name`` binds one prefix to one model)."""
    if uri.scheme == "hf":
        from mxfs.origins.hf import HuggingFaceSource

        return HuggingFaceSource()
    if uri.scheme in OBJECT_SCHEMES:
        from mxfs.origins.objstore import STORES, ObjectStoreSource

        return ObjectStoreSource(STORES[uri.scheme](uri.bucket), uri.prefix, name)
    raise InvalidModelName(f"{uri} is a local path, not a remote origin")
