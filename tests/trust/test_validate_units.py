"""The validation layer and the path guard, field by field (no processes)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from mxfs.errors import ManifestError
from mxfs.fileio import path_under
from mxfs.manifest.model import FileEntry, Manifest, TensorInfo
from mxfs.manifest.validate import validate_manifest
from mxfs.rpc.convert import manifest_from_pb, manifest_to_pb

BS = 64 * 1024
SHA = hashlib.sha256(b"x").hexdigest()
REV = "a" * 40


def _good() -> Manifest:
    f = FileEntry("dir/model.safetensors", BS + 1, SHA, (b"\1" * 32, b"\2" * 32),
                  (TensorInfo("w", "F32", (2,), 8, 16),))
    return Manifest("org/model", REV, BS, (f, FileEntry("config.json", 0, SHA)))


def _file(**changes: object) -> Manifest:
    m = _good()
    return replace(m, files=(replace(m.files[0], **changes), m.files[1]))


BAD = {
    "name": replace(_good(), name="../org/x"),
    "branch revision": replace(_good(), revision="main"),
    "revision traversal": replace(_good(), revision="../../" + "a" * 34),
    "block size 0": replace(_good(), block_size=0),
    "block size not a power of two": replace(_good(), block_size=BS + 1),
    "block size huge": replace(_good(), block_size=1 << 40),
    "dotdot path": _file(path="a/../../x"),
    "absolute path": _file(path="/etc/passwd"),
    "empty part": _file(path="a//b"),
    "nul": _file(path="a\x00b"),
    "short digest": _file(sha256="ab" * 8),
    "digest traversal": _file(sha256="../" * 21 + "a"),
    "uppercase digest": _file(sha256=SHA.upper()),
    "negative size": _file(size=-1),
    "huge size": _file(size=1 << 60),
    "hash count": _file(block_hashes=(b"\1" * 32,)),
    "hash length": _file(block_hashes=(b"\1" * 32, b"\2" * 31)),
    "tensor past end": _file(tensors=(TensorInfo("w", "F32", (2,), 8, BS + 2),)),
    "tensor reversed": _file(tensors=(TensorInfo("w", "F32", (2,), 16, 8),)),
    "duplicate path": replace(_good(), files=(_good().files[0], _good().files[0])),
    "file and dir": replace(_good(), files=(_good().files[0], FileEntry("dir", 0, SHA))),
}


def test_good_manifest_passes_and_round_trips() -> None:
    m = _good()
    assert validate_manifest(m, "org/model", REV) is m
    assert manifest_from_pb(manifest_to_pb(m)) == m


@pytest.mark.parametrize("case", sorted(BAD))
def test_hostile_field_is_a_clear_error(case: str) -> None:
    with pytest.raises(ManifestError):
        validate_manifest(BAD[case])


def test_answer_for_another_model_or_commit_is_refused() -> None:
    with pytest.raises(ManifestError, match="asked for"):
        validate_manifest(_good(), name="org/other")
    with pytest.raises(ManifestError, match="asked for"):
        validate_manifest(_good(), revision="b" * 40)
    validate_manifest(_good(), revision="main")  # a branch resolves to any commit


def test_path_under_refuses_escapes(tmp_path: Path) -> None:
    assert path_under(tmp_path, "a", "b.json") == tmp_path / "a" / "b.json"
    for parts in (("..", "x"), ("a/../../x",), ("/etc",), ("a\x00",), ("",), (".",)):
        with pytest.raises(ValueError):
            path_under(tmp_path, *parts)
