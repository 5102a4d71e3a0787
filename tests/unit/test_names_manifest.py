"""Names, paths, manifests and the local manifest builder."""

from __future__ import annotations

import pytest

from mxfs.errors import InvalidModelName, ManifestError, SafetensorsHeaderError
from mxfs.manifest.builder import build_manifest, check_block_size, content_revision
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import (
    hub_folder,
    name_from_hub_folder,
    parse_model_ref,
    validate_name,
    validate_relpath,
)
from mxfs.modelgen import ModelShape, generate_model


@pytest.mark.parametrize("name", ["../etc", "a/../b", "a/b/c", "a", "/a/b", "a--b/c", "a/.b", "a/b.", "a/b\x00"])
def test_bad_names(name):
    with pytest.raises(InvalidModelName):
        validate_name(name)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b", "a/\x00"])
def test_bad_relpaths(path):
    with pytest.raises(InvalidModelName):
        validate_relpath(path)


def test_refs_and_hub_folders():
    ref = parse_model_ref("Qwen/Qwen3-0.6B@v1.0")
    assert (ref.org, ref.repo, ref.revision) == ("Qwen", "Qwen3-0.6B", "v1.0")
    assert parse_model_ref("a/b").revision == "main"
    assert hub_folder("a/b-c") == "models--a--b-c"
    assert name_from_hub_folder("models--a--b-c") == "a/b-c"
    with pytest.raises(InvalidModelName):
        parse_model_ref("a/b@../../x")
    with pytest.raises(InvalidModelName):
        name_from_hub_folder("datasets--a--b")


def test_block_math():
    f = FileEntry("x", 10 * 1024 + 5, "0" * 64)
    assert f.block_count(1024) == 11
    assert f.block_span(10, 1024) == (10240, 5)
    assert list(f.blocks_for(1000, 100, 1024)) == [0, 1]
    assert list(f.blocks_for(0, 0, 1024)) == []
    assert list(f.blocks_for(10 * 1024 + 4, 100, 1024)) == [10]
    with pytest.raises(IndexError):
        f.block_span(11, 1024)


def test_build_manifest_hashes_blocks_and_indexes_tensors(tmp_path):
    model = generate_model(tmp_path / "o" / "m", ModelShape(hidden=64, intermediate=128, layers=2, heads=2,
                                                           kv_heads=2, vocab=128))
    m = build_manifest("o/m", model, block_size=64 * 1024)
    assert len(m.revision) == 40
    st = m.file("model.safetensors")
    assert st.tensors and len(st.block_hashes) == st.block_count(64 * 1024)
    assert Manifest.from_json(m.to_json()) == m
    assert content_revision(m.files) == m.revision
    (model / "config.json").write_text("{}")
    assert build_manifest("o/m", model, block_size=64 * 1024).revision != m.revision


def test_build_manifest_rejects_hostile_safetensors(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(SafetensorsHeaderError):
        build_manifest("o/m", tmp_path)


def test_block_size_bounds():
    for bad in (1000, 3 * 1024 * 1024, 1 << 30):
        with pytest.raises(ValueError):
            check_block_size(bad)
    with pytest.raises(ManifestError):
        Manifest.from_json("{}")
