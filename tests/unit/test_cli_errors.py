"""One-line errors of commands that need no server or mount."""

from __future__ import annotations

import pytest

from mxfs.cli import build_parser, main
from mxfs.config import parse_size


@pytest.mark.parametrize("text", ["inf", "nan", "-1", "-2GiB", "1e40", "lots"])
def test_sizes_that_are_not_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_demo_size_inf_is_a_clear_error(capsys, tmp_path) -> None:
    assert main(["demo", "--dir", str(tmp_path), "--size", "inf"]) == 2
    err = capsys.readouterr().err
    assert "not a size" in err and "Traceback" not in err


def test_model_commands_take_server_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["model", "list", "--server", "a:1"]).server == "a:1"
    assert parser.parse_args(["model", "--server", "a:1", "list"]).server == "a:1"
    assert parser.parse_args(["model", "--server", "a:1", "files", "o/n"]).server == "a:1"
    assert parser.parse_args(["model", "files", "o/n", "--server", "b:2"]).server == "b:2"
    assert parser.parse_args(["model", "download", "o/n", "--server", "c:3"]).server == "c:3"
    assert parser.parse_args(["model", "--server", "c:3", "download", "o/n"]).server == "c:3"


def test_download_cache_dir_needs_no_shared_storage(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MODEL_EXPRESS_NO_SHARED_STORAGE", raising=False)
    assert main(["model", "download", "o/n", "--server", "127.0.0.1:1", "--cache-dir", str(tmp_path)]) == 2
    assert "--no-shared-storage" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_csi_endpoint_it_cannot_create_is_a_clear_error(tmp_path) -> None:
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv in (["-m", "mxfs", "csi"], ["-m", "mxfs_csi"]):
        out = subprocess.run([sys.executable, *argv, "--endpoint", f"unix://{blocker}/sub/csi.sock",
                              "--mountpoint", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "cannot create the CSI socket's directory" in out.stderr, out.stderr
