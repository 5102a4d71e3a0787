"""Real GCS and Azure Blob emulators on 127.0.0.1: PyPI ``gcp-storage-emulator`` and npm ``azurite``.

Each ``env()`` is what the stores' own SDKs (and the servers a test starts) need to reach them:
``STORAGE_EMULATOR_HOST`` for google-cloud-storage, ``AZURE_STORAGE_CONNECTION_STRING`` for
azure-storage-blob.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mxfs.demo import free_port, wait_for

# Azurite's documented development account (public, emulator only)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def gcs_emulator_path() -> str | None:
    here = Path(sys.executable).parent / "gcp-storage-emulator"
    return str(here) if here.exists() else shutil.which("gcp-storage-emulator")


def azurite_path() -> str | None:
    return shutil.which("azurite-blob")


@dataclass
class _Emulator:
    workdir: Path
    buckets: tuple[str, ...] = ("models",)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "emulator.log"
        self.proc = subprocess.Popen(args, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, probe, what: str) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {(self.workdir / 'emulator.log').read_text()[-2000:]}")
            try:
                probe()
                return True
            except Exception:  # any failure means "not up yet" (bounded by wait_for)
                return False

        wait_for(up, 60, what)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def upload_dir(self, bucket: str, prefix: str, directory: Path) -> list[str]:
        keys = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{path.relative_to(directory).as_posix()}".lstrip("/")
            self._upload(bucket, key, path)
            keys.append(key)
        return keys

    def _upload(self, bucket: str, key: str, path: Path) -> None:
        raise NotImplementedError


@dataclass
class GCSEmulator(_Emulator):
    """``gcp-storage-emulator`` (in memory); ``gs://`` through ``STORAGE_EMULATOR_HOST``."""

    scheme = "gs"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GOOGLE_CLOUD_PROJECT": "mxfs-test"}

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="mxfs-test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def start(self) -> GCSEmulator:
        exe = gcs_emulator_path()
        if exe is None:
            raise FileNotFoundError("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
        self._spawn([exe, "start", "--host=127.0.0.1", f"--port={self.port}", "--in-memory"])
        client = self.client()
        self._wait(lambda: list(client.list_buckets()), "gcp-storage-emulator")
        for b in self.buckets:
            client.create_bucket(b)
        return self

    def _upload(self, bucket: str, key: str, path: Path) -> None:
        self.client().bucket(bucket).blob(key).upload_from_filename(str(path))


@dataclass
class Azurite(_Emulator):
    """Azurite's blob service; ``az://`` through ``AZURE_STORAGE_CONNECTION_STRING``."""

    scheme = "az"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint}/{AZURITE_ACCOUNT};")

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def start(self) -> Azurite:
        exe = azurite_path()
        if exe is None:
            raise FileNotFoundError("azurite is not installed (npm install -g azurite)")
        self._spawn([exe, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                     str(self.workdir / "data"), "--silent", "--skipApiVersionCheck", "--loose"])
        client = self.client()
        self._wait(lambda: list(client.list_containers()), "azurite")
        for b in self.buckets:
            client.create_container(b)
        return self

    def _upload(self, bucket: str, key: str, path: Path) -> None:
        with open(path, "rb") as fh:
            self.client().get_container_client(bucket).upload_blob(key, fh, overwrite=True)
