"""The server remembers names no origin has: asking again costs no Hub request."""

from __future__ import annotations

import pytest

from mxfs.errors import ModelNotFound
from mxfs.rpc.client import MxfsClient


def test_missing_model_costs_one_hub_request(hub, server_env, start_server, tmp_path):
    server_env(origins="hf")
    (tmp_path / "empty").mkdir()  # a --models-dir that does not exist stops the start
    server = start_server(models_dir=tmp_path / "empty")
    client = MxfsClient(server.address)
    try:
        hub.reset_counters()
        for _ in range(20):
            with pytest.raises(ModelNotFound):
                client.get_manifest("acme/not-there")
        def asked(name: str) -> int:
            return sum(n for path, n in hub.requests.items() if f"/{name}/" in path or path.endswith(f"/{name}"))

        assert 1 <= asked("acme/not-there") <= 2, dict(hub.requests)  # one question (a retry at most), not 20
        with pytest.raises(ModelNotFound):
            client.get_manifest("acme/not-there-either")
        assert asked("acme/not-there-either") >= 1  # another name is asked for, of course
    finally:
        client.close()
