"""``gs://`` and ``az://`` origins for real: a GCS emulator and Azurite on 127.0.0.1.

The same checks as for S3: the server lists and pins a snapshot, reads lazy blocks one by
one from the store (each once, counted by its origin-egress metric), hydrates the rest, and
a real mount reads everything back byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mxfs.manifest.hashing import block_digest
from mxfs.rpc.client import MxfsClient
from tests.conftest import BLOCK_SIZE, MODEL
from tests.origins.test_mount_remote import EAGER, ORIGIN, _check_lazy_then_exact
from tests.support.emulators import Azurite, GCSEmulator, gcs_emulator_path
from tests.support.needs import missing, need_module, need_program

BUCKET = "models"


def _start(kind: str, workdir: Path):
    if kind == "gs":
        need_module("google.cloud.storage", "pip install google-cloud-storage")
        need_module("gcp_storage_emulator", "pip install gcp-storage-emulator")
        if gcs_emulator_path() is None:
            missing("gcp_storage_emulator", "the gcp-storage-emulator script is not installed")
        return GCSEmulator(workdir).start()
    need_module("azure.storage.blob", "pip install azure-storage-blob")
    need_program("azurite-blob", "npm install -g azurite")
    return Azurite(workdir).start()


@pytest.fixture(scope="module", params=["gs", "az"])
def store(request, tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator:
    """An emulator holding the test model under ``<scheme>://models/zoo/<org>/<name>/``."""
    emulator = _start(request.param, tmp_path_factory.mktemp(f"{request.param}-emulator"))
    emulator.upload_dir(BUCKET, f"zoo/{MODEL}", models_dir / MODEL)
    emulator.uri = f"{emulator.scheme}://{BUCKET}/zoo"
    yield emulator
    emulator.stop()


@pytest.fixture
def store_env(store, monkeypatch: pytest.MonkeyPatch):
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    return store


def test_lazy_blocks_each_read_once_then_hydrated(store_env, inproc_server, models_dir):
    server = inproc_server(origins=[store_env.uri], origin_eager_bytes=EAGER)
    client = MxfsClient(server.address)
    try:
        manifest = client.get_manifest(MODEL)
        assert manifest.revision and {f.path for f in manifest.files} == {
            p.relative_to(models_dir / MODEL).as_posix() for p in (models_dir / MODEL).rglob("*") if p.is_file()}
        egress = server.metrics.origin_bytes._value.get
        at_resolve = egress()
        entry = max(manifest.files, key=lambda f: f.size)
        assert entry.lazy and not entry.digest_verified  # an object version, not a digest
        data = (models_dir / MODEL / entry.path).read_bytes()
        digest = [block_digest(manifest.block_hash, data[i:i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE)]

        assert client.block_hashes(MODEL, manifest.revision, entry.path, 5, 3) == digest[5:8]
        assert egress() - at_resolve == 3 * BLOCK_SIZE  # exactly the asked blocks, ranged reads
        assert client.read_range(MODEL, manifest.revision, entry.path, 5 * BLOCK_SIZE + 7, 100) == \
            data[5 * BLOCK_SIZE + 7: 5 * BLOCK_SIZE + 107]
        assert egress() - at_resolve == 3 * BLOCK_SIZE  # served from the server's block store
        got = b"".join(bytes(d) for _, d in client.iter_range(MODEL, manifest.revision, entry.path, 0, entry.size, 120))
        assert got == data
        assert egress() - at_resolve == entry.size  # the rest once
        assert client.block_hashes(MODEL, manifest.revision, entry.path, 0, len(digest)) == digest
    finally:
        client.close()


@pytest.mark.fuse
def test_mount_reads_lazily_and_exactly(store_env, server_env, start_server, start_mount, models_dir,
                                        origin_hashes, tmp_path):
    server_env(origins=store_env.uri, origin_eager_bytes=EAGER)
    (tmp_path / "empty").mkdir()
    server = start_server(models_dir=tmp_path / "empty")
    daemon = start_mount(server, wait_model=MODEL, extra=["--readahead-blocks", "0"])
    _check_lazy_then_exact(daemon, server, MODEL, models_dir / MODEL, origin_hashes, lambda: server.metric(ORIGIN))
