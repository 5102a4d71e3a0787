"""The virtual tree (no kernel) and the layered configuration."""

from __future__ import annotations

import pytest

from mxfs.config import ConfigError, MountConfig, ServerConfig, default_yaml, load, parse_size
from mxfs.errors import InvalidModelName
from mxfs.fuse.tree import ROOT_INODE, Tree
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import ModelRef


def _m(rev: str) -> Manifest:
    files = (FileEntry("config.json", 10, "1" * 64, (b"x",)), FileEntry("sub/w.safetensors", 20, "2" * 64, (b"y",)))
    return Manifest("org/model", rev, 1 << 20, files)


def test_tree_layout_and_shared_inodes():
    t = Tree()
    assert t.pending_ref(ROOT_INODE, "org") is None  # placeholder org
    org = t.child(ROOT_INODE, "org")
    assert org is not None and not org.listed
    ref = t.pending_ref(org.inode, "model")
    assert ref == ModelRef("org/model", "main")
    t.add_model(ref, _m("a" * 40))
    model = t.model_dir("org/model")
    cfg = t.child(model.inode, "config.json")
    hub = t.child(ROOT_INODE, "hub")
    hm = t.child(hub.inode, "models--org--model")
    snap = t.child(t.child(hm.inode, "snapshots").inode, "a" * 40)
    assert t.child(snap.inode, "config.json").inode == cfg.inode
    assert t.child(t.child(hm.inode, "refs").inode, "main").content == b"a" * 40
    assert [n for n, _ in t.listing(ROOT_INODE)] == ["hub", "org"]
    assert t.pending_ref(t.child(hm.inode, "snapshots").inode, "b" * 40) == ModelRef("org/model", "b" * 40)
    with pytest.raises(InvalidModelName):
        t.pending_ref(t.child(hm.inode, "snapshots").inode, "../../etc")
    with pytest.raises(InvalidModelName):
        t.pending_ref(ROOT_INODE, "..")
    t.add_model(ModelRef("org/model", "b" * 40), _m("b" * 40))
    assert t.child(model.inode, "config.json").inode == cfg.inode  # first revision keeps org/name
    assert len(t.manifests()) == 2


def test_config_layers(tmp_path, monkeypatch):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("server:\n  port: 9000\n  block_size: 1MiB\n  models_dir: /m\n")
    cfg = load(ServerConfig, "server", {}, str(yaml_path))
    assert (cfg.port, cfg.block_size, cfg.models_dir) == (9000, 1 << 20, "/m")
    monkeypatch.setenv("MODEL_EXPRESS_SERVER_PORT", "9100")
    assert load(ServerConfig, "server", {}, str(yaml_path)).port == 9100
    assert load(ServerConfig, "server", {"port": 9200}, str(yaml_path)).port == 9200
    monkeypatch.setenv("MODEL_EXPRESS_URL", "h:1")
    assert load(MountConfig, "mount", {"mountpoint": "/x"}).server == "h:1"


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load(ServerConfig, "server", {}, str(bad))
    with pytest.raises(ConfigError, match="block size"):
        load(ServerConfig, "server", {"block_size": 12345})
    with pytest.raises(ConfigError, match="server address"):
        load(MountConfig, "mount", {"mountpoint": "/x", "server": ""})


def test_defaults_are_pinned():
    s = ServerConfig()
    assert (s.host, s.port, s.block_size, s.chunk_size) == ("0.0.0.0", 8001, 4 << 20, 1 << 20)
    assert "server:" in default_yaml() and "mount:" in default_yaml()
    assert parse_size("4MiB") == 4 << 20 and parse_size("1.5G") == 3 << 29 and parse_size("100") == 100
