"""Build a manifest from a directory of files (the local origin and the server cache)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from mxfs.errors import ManifestError
from mxfs.fileio import atomic_write
from mxfs.manifest import hashing
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import validate_relpath
from mxfs.manifest.safetensors import parse_header

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 64 * 1024 * 1024
_READ_CHUNK = 8 * 1024 * 1024


def check_block_size(block_size: int) -> int:
    """Block sizes are powers of two between 64 KiB and 64 MiB."""
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise ValueError(
            f"block size {block_size} must be a power of two in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]"
        )
    return block_size


def list_files(root: Path) -> list[str]:
    """Relative paths of every regular file under ``root``; hidden entries and links skipped."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if name.startswith(".") or full.is_symlink() or not full.is_file():
                continue
            out.append(validate_relpath(full.relative_to(root).as_posix()))
    return out


def hash_file(path: Path, block_size: int, algorithm: str = hashing.DEFAULT) -> tuple[str, tuple[bytes, ...], int]:
    """One pass over a file: (sha256 hex, per-block ``algorithm`` digests, size)."""
    whole = hashlib.sha256()
    blocks: list[bytes] = []
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            block = fh.read(block_size)
            if not block:
                break
            size += len(block)
            whole.update(block)
            blocks.append(hashing.block_digest(algorithm, block))
            if len(block) < block_size:
                break
    return whole.hexdigest(), tuple(blocks), size


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a whole file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_tensors(path: Path, size: int) -> tuple:
    """Tensor index of a safetensors file (validated; raises SafetensorsHeaderError)."""
    with open(path, "rb") as fh:

        def read_at(offset: int, length: int) -> bytes:
            fh.seek(offset)
            return fh.read(length)

        _, tensors = parse_header(read_at, size)
    return tensors


class DigestCache:
    """Remembers file digests by (path, size, mtime, inode) so unchanged files aren't rehashed."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._entries: dict[str, list] = {}
        if path and path.exists():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self._entries = {}

    @staticmethod
    def _key(path: Path, st: os.stat_result, block_size: int, algorithm: str) -> str:
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{block_size}"
        return key if algorithm == hashing.SHA256 else f"{key}|{algorithm}"  # sha256: entries made before

    def get(self, path: Path, st: os.stat_result, block_size: int, algorithm: str = hashing.DEFAULT):
        with self._lock:
            hit = self._entries.get(self._key(path, st, block_size, algorithm))
        if hit is None:
            return None
        return hit[0], tuple(bytes.fromhex(h) for h in hit[1]), st.st_size

    def put(self, path: Path, st: os.stat_result, block_size: int, value, algorithm: str = hashing.DEFAULT) -> None:
        sha, blocks, _ = value
        with self._lock:
            self._entries[self._key(path, st, block_size, algorithm)] = [sha, [b.hex() for b in blocks]]

    def save(self) -> None:
        if not self._path:
            return
        with self._lock:
            data = json.dumps(self._entries)
        atomic_write(self._path, data)


def content_revision(entries: Iterable[FileEntry]) -> str:
    """A 40-hex, commit-shaped revision derived from the files' paths, sizes and digests."""
    h = hashlib.sha1()
    for f in sorted(entries, key=lambda e: e.path):
        h.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
    return h.hexdigest()


def build_manifest(
    name: str,
    root: Path,
    block_size: int = DEFAULT_BLOCK_SIZE,
    origin: str = "",
    digests: DigestCache | None = None,
    block_hash: str = hashing.DEFAULT,
) -> Manifest:
    """Hash every file of ``root`` (blocks with ``block_hash``) and index its safetensors files."""
    check_block_size(block_size)
    hashing.check_algorithm(block_hash)
    if not root.is_dir():
        raise ManifestError(f"{root} is not a directory")
    entries: list[FileEntry] = []
    for rel in list_files(root):
        full = root / rel
        st = full.stat()
        value = digests.get(full, st, block_size, block_hash) if digests else None
        if value is None:
            value = hash_file(full, block_size, block_hash)
            if value[2] != st.st_size:
                raise ManifestError(f"{full} changed while it was being hashed")
            if digests:
                digests.put(full, st, block_size, value, block_hash)
        sha, blocks, size = value
        tensors = read_tensors(full, size) if rel.endswith(".safetensors") else ()
        entries.append(FileEntry(rel, size, sha, blocks, tensors))
    if digests:
        digests.save()
    return Manifest(name, content_revision(entries), block_size, tuple(entries), origin, block_hash=block_hash)
