"""Every ``mxfs server`` / ``mxfs mount`` flag reaches its config, and the layers merge in order."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from mxfs.cli import build_parser, main
from mxfs.config import MountConfig, ServerConfig, load

NOT_CONFIG = {"help", "config", "print_config", "validate_config"}


def _options(command: str) -> list[argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]._actions


@pytest.mark.parametrize(("command", "cls"), [("server", ServerConfig), ("mount", MountConfig)])
def test_every_flag_names_a_config_field(command: str, cls: type) -> None:
    """A flag whose destination is not a field would be parsed and then silently dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    strays = [a.option_strings or [a.dest] for a in _options(command) if a.dest not in names | NOT_CONFIG]
    assert not strays


def _validated(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_mount_flags_reach_the_config(capsys, tmp_path: Path) -> None:
    out = _validated(capsys, ["mount", str(tmp_path / "mnt"), "--server", "h:1", "--negative-ttl", "5",
                              "--readahead-blocks", "3", "--no-passthrough", "--validate-config"])
    assert "'negative_ttl': 5.0" in out and "'readahead_blocks': 3" in out and "'passthrough': False" in out


def test_a_variables_default_never_overrides_the_config_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MX_METADATA_BACKEND", raising=False)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("server:\n  metadata_backend: redis\n  redis_url: redis://r:6379\n")
    assert load(ServerConfig, "server", {}, str(yaml_path)).metadata_backend == "redis"
    monkeypatch.setenv("MX_METADATA_BACKEND", "embedded")  # a value set in the environment does win
    assert load(ServerConfig, "server", {}, str(yaml_path)).metadata_backend == "embedded"


def test_every_declared_variable_is_read(monkeypatch) -> None:
    """Each text field's listed variables (e.g. ``MXFS_CACHE_DIR``) set it; token files are
    read at load and covered in tests/trust."""
    cases = ((ServerConfig, "server", {}), (MountConfig, "mount", {"mountpoint": "/x", "server": "h:1"}))
    for cls, section, base in cases:
        for f in dataclasses.fields(cls):
            if not isinstance(f.default, str) or f.name in base or "token" in f.name:
                continue
            value = {"metadata_backend": "embedded", "log_level": "DEBUG"}.get(f.name, "/some/where")
            if f.name.endswith("_file"):
                value = __file__  # PEM files must exist to be accepted
            for name in f.metadata.get("env", ()):
                monkeypatch.setenv(name, value)
                try:
                    assert getattr(load(cls, section, dict(base)), f.name) == value, name
                finally:
                    monkeypatch.delenv(name)
