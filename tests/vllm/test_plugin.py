"""The ``mx`` plugin is found through the ``vllm.general_plugins`` entry point."""

from __future__ import annotations

from importlib.metadata import entry_points


def test_entry_point_is_declared():
    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("mx") == "mxfs.vllm.plugin:register"


def test_vllm_loads_the_plugin_and_knows_load_format_mx(vllm_installed, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "mx")
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    from mxfs.vllm.loader import MxModelLoader

    assert isinstance(get_model_loader(LoadConfig(load_format="mx")), MxModelLoader)
