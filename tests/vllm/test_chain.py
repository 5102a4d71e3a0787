"""The load-strategy chain: order, expected misses, failures fall through, the winner is recorded."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest


@dataclass
class Fake:
    name: str
    available: bool = True
    outcome: str = "ok"  # ok | miss | fail
    calls: list[str] = field(default_factory=list)

    def is_available(self, ctx) -> bool:
        return self.available

    def load(self, model, ctx):
        from mxfs.vllm.strategies import Loaded, StrategyMiss

        self.calls.append("load")
        if self.outcome == "miss":
            raise StrategyMiss("nothing here")
        if self.outcome == "fail":
            raise OSError("disk on fire")
        model["weights"] = self.name  # every weight, as a real strategy would
        return Loaded(2_000_000_000, f"loaded by {self.name}")


@pytest.fixture
def ctx(vllm_installed):
    from types import SimpleNamespace

    return SimpleNamespace(model_config=SimpleNamespace(model="org/name"))


def test_first_available_success_wins_and_is_logged(ctx, caplog):
    from mxfs.vllm.strategies import LoadChain

    p2p, files, download, default = Fake("p2p", outcome="miss"), Fake("files", available=False), \
        Fake("download", outcome="fail"), Fake("default")
    model: dict = {}
    with caplog.at_level(logging.INFO, logger="mxfs"):
        result = LoadChain([p2p, files, download, default]).run(model, ctx)
    assert result.winner == "default" and model["weights"] == "default"
    assert [n for n, _ in result.skipped] == ["p2p", "files", "download"]
    assert files.calls == [] and p2p.calls == ["load"] and download.calls == ["load"]
    assert "disk on fire" in dict(result.skipped)["download"]
    line = next(r.getMessage() for r in caplog.records if "won" in r.getMessage())
    assert line.startswith("mx: strategy default won: loaded by default in ")
    assert "GB/s" in line and "p2p: nothing here" in line


def test_no_strategy_left_is_a_clear_error(ctx):
    from mxfs.vllm.strategies import LoadChain, StrategyMiss

    with pytest.raises(StrategyMiss, match="no load strategy could load the model: a: nothing here; b: not available"):
        LoadChain([Fake("a", outcome="miss"), Fake("b", available=False)]).run({}, ctx)


def test_bugs_are_not_swallowed(ctx):
    from mxfs.vllm.strategies import LoadChain

    class Buggy(Fake):
        def load(self, model, ctx):
            raise TypeError("a bug")

    with pytest.raises(TypeError):
        LoadChain([Buggy("buggy"), Fake("default")]).run({}, ctx)


def test_model_streamer_locations(vllm_installed, tmp_path, monkeypatch):
    from mxfs.vllm.strategies import ModelStreamerStrategy, StrategyMiss

    where = ModelStreamerStrategy.location
    assert where("s3://bucket/org/name/", None) == "s3://bucket/org/name"
    assert where("gs://b/m", None) == "gs://b/m" and where("az://c/m", None) == "az://c/m"
    assert where(str(tmp_path), None) == str(tmp_path)
    with pytest.raises(StrategyMiss, match="not a directory"):
        where(str(tmp_path / "missing"), None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    assert where("org/name", None) == str(snap)
    with pytest.raises(StrategyMiss, match="not s3://"):
        where("org/other", None)
