"""Fixtures of the origin tests: a local HF endpoint, a real s3rver, server env helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL
from tests.support.hf_endpoint import HubEndpoint
from tests.support.needs import missing
from tests.support.s3 import S3Server, s3rver_path

BUCKET = "models"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEndpoint]:
    """A fresh HF-compatible endpoint; ``HF_ENDPOINT`` points at it (also for server processes)."""
    endpoint = HubEndpoint().start()
    monkeypatch.setenv("HF_ENDPOINT", endpoint.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if s3rver_path() is None:
        missing("s3rver", "s3rver is not installed and cannot be installed with npm (npm install -g s3rver)")
    server = S3Server(tmp_path_factory.mktemp("s3rver"), buckets=(BUCKET, "other")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_model(s3_server: S3Server, models_dir: Path) -> str:
    """The generated test model uploaded to ``s3://models/zoo/<org>/<name>/``; returns the root URI."""
    s3_server.upload_dir(BUCKET, f"zoo/{MODEL}", models_dir / MODEL)
    return f"s3://{BUCKET}/zoo"


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """AWS_* variables of this process (and the servers it starts) point at s3rver."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch):
    """Set ``MODEL_EXPRESS_SERVER_*`` settings for the server processes a test starts."""

    def apply(**settings: object) -> None:
        for key, value in settings.items():
            monkeypatch.setenv(f"MODEL_EXPRESS_SERVER_{key.upper()}", str(value))

    return apply


@pytest.fixture
def inproc_server(tmp_path: Path) -> Iterator:
    """Factory: an mxfs server in this process (config kwargs), stopped at the end."""
    from mxfs.config import ServerConfig
    from mxfs.demo import free_port
    from mxfs.server.app import Server
    from tests.conftest import BLOCK_SIZE

    servers: list = []

    def start(**cfg: object):
        cfg.setdefault("cache_dir", str(tmp_path / f"server-{len(servers)}"))
        cfg.setdefault("block_size", BLOCK_SIZE)
        cfg.setdefault("data_port", free_port())  # never the fixed default 8002 (tests run side by side)
        server = Server(ServerConfig(host="127.0.0.1", port=0, metrics_port=0, **cfg))  # gRPC picks
        server.start()
        server.address = f"127.0.0.1:{server.port}"
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop(0)
