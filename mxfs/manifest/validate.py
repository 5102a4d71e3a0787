"""The one check of everything that crosses a trust boundary into a manifest.

Manifests reach a node from the server (gRPC), from its own disk, and reach the server
from origins (HF siblings, object-store listings). Every one of them passes
:func:`validate_manifest` before any of its values names a file, sizes a buffer or
divides: names and 40-hex revisions, relative ``/``-paths without ``..``, NUL or empty
parts, 64-hex content ids, 32-byte block digests (one per block), sizes and block sizes
in range, tensor ranges inside their file. A violation is a :class:`ManifestError` that
names the field; nothing is written before the check passes.
"""

from __future__ import annotations

import re

from mxfs.errors import InvalidModelName, ManifestError
from mxfs.manifest.builder import check_block_size
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import is_commit, validate_name, validate_relpath

#: the largest single file a manifest may describe (64 TiB)
MAX_FILE_SIZE = 1 << 46
#: files per model and tensors per file (hostile counts would only cost memory)
MAX_FILES = 100_000
MAX_TENSORS = 1_000_000
MAX_LABEL = 1024

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SHA1_HEX = re.compile(r"^[0-9a-f]{40}$")


def is_sha256_hex(value: str) -> bool:
    """True for a lowercase 64-hex digest (a content id used in cache paths)."""
    return bool(_SHA256_HEX.match(value))


def check_sha256_hex(value: str, what: str) -> str:
    if not isinstance(value, str) or not is_sha256_hex(value):
        raise ManifestError(f"{what}: {value!r} is not a 64-hex sha256")
    return value


def check_sha1_hex(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SHA1_HEX.match(value):
        raise ManifestError(f"{what}: {value!r} is not a 40-hex id")
    return value


def check_size(size: int, what: str, limit: int = MAX_FILE_SIZE) -> int:
    if not isinstance(size, int) or not 0 <= size <= limit:
        raise ManifestError(f"{what}: size {size!r} outside [0, {limit}]")
    return size


def _check_file(f: FileEntry, block_size: int, where: str) -> None:
    try:
        validate_relpath(f.path)
    except InvalidModelName as exc:
        raise ManifestError(f"{where}: {exc}") from None
    what = f"{where}/{f.path}"
    check_size(f.size, what)
    check_sha256_hex(f.sha256, f"{what}: content id")
    if f.block_hashes:
        n = f.block_count(block_size)
        if len(f.block_hashes) != n:
            raise ManifestError(f"{what}: {len(f.block_hashes)} block hashes for {n} blocks")
        if any(len(h) != 32 for h in f.block_hashes):
            raise ManifestError(f"{what}: a block hash is not 32 bytes")
    if len(f.tensors) > MAX_TENSORS:
        raise ManifestError(f"{what}: {len(f.tensors)} tensors (max {MAX_TENSORS})")
    for t in f.tensors:
        if not 0 <= t.begin <= t.end <= f.size:
            raise ManifestError(f"{what}: tensor {t.name[:80]!r} range {t.begin}..{t.end} outside the file")
        if len(t.name) > 4096 or len(t.dtype) > 32 or len(t.shape) > 64 or any(d < 0 for d in t.shape):
            raise ManifestError(f"{what}: tensor {t.name[:80]!r} is malformed")


def validate_manifest(m: Manifest, name: str | None = None, revision: str | None = None) -> Manifest:
    """Return ``m`` if every field is safe to use for paths and arithmetic, else raise.

    ``name``/``revision``: what the caller asked for; the manifest must be for that model
    (and that commit, when a commit was asked for).
    """
    try:
        validate_name(m.name)
    except InvalidModelName as exc:
        raise ManifestError(f"manifest: {exc}") from None
    where = f"manifest of {m.name}"
    if name is not None and m.name != name:
        raise ManifestError(f"{where}: asked for {name}")
    if not is_commit(m.revision):
        raise ManifestError(f"{where}: revision {m.revision[:80]!r} is not a 40-hex commit")
    if revision is not None and is_commit(revision) and m.revision != revision:
        raise ManifestError(f"{where}: revision {m.revision} where {revision} was asked for")
    where = f"{where}@{m.revision[:12]}"
    if not isinstance(m.block_size, int):
        raise ManifestError(f"{where}: block size {m.block_size!r}")
    try:
        check_block_size(m.block_size)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if len(m.origin) > MAX_LABEL or "\x00" in m.origin:
        raise ManifestError(f"{where}: malformed origin label")
    if len(m.files) > MAX_FILES:
        raise ManifestError(f"{where}: {len(m.files)} files (max {MAX_FILES})")
    paths: set[str] = set()
    for f in m.files:
        _check_file(f, m.block_size, where)
        if f.path in paths:
            raise ManifestError(f"{where}: {f.path!r} listed twice")
        paths.add(f.path)
    for p in paths:  # a file may not also be a directory of another file ("a" and "a/b")
        head = p.rpartition("/")[0]
        while head:
            if head in paths:
                raise ManifestError(f"{where}: {head!r} is both a file and a directory")
            head = head.rpartition("/")[0]
    return m
