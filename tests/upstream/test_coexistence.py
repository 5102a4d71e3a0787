"""PyPI modelexpress and mxfs in one image: registering mxfs's vLLM plugin never breaks ModelExpress's loader."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.upstream.conftest import upstream_installed

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    import modelexpress                      # what ModelExpress's vLLM plugin imports: its own P2P stubs
    from mxfs.vllm import plugin
    plugin.register()                        # mxfs's plugin in the same process (no VLLM_PLUGINS)
    assert "mxfs.rpc.model_express_p2p_pb2" not in sys.modules, "mxfs loaded its P2P stubs at registration"
    from mxfs.weight_sources.client import SourceClient
    from mxfs.weight_sources.errors import P2PError
    from mxfs.weight_sources.model import SourceIdentity
    try:
        SourceClient("127.0.0.1:1").list(SourceIdentity("org/m", "a" * 40, "bfloat16"))
    except P2PError as exc:
        print("P2P-OFF", exc)
    from modelexpress.metadata.source_id import compute_mx_source_id   # ModelExpress still works
    from modelexpress import p2p_pb2
    print("UPSTREAM-OK", compute_mx_source_id(p2p_pb2.SourceIdentity(model_name="m")))
""")


@pytest.mark.usefixtures("upstream")  # fails (CI) or skips when modelexpress is missing
def test_both_installed_in_one_process(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert upstream_installed(cwd)
    repo = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=repo)], cwd=cwd, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "P2P-OFF" in out.stdout and "VLLM_PLUGINS=mx" in out.stdout
    assert "UPSTREAM-OK" in out.stdout
