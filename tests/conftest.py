"""Shared fixtures: generated models, a real server process, real FUSE mounts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mxfs.manifest.builder import file_sha256
from mxfs.modelgen import ModelShape, generate_model
from tests.support.cluster import MountProc, ServerProc, stop_all
from tests.support.needs import need_fuse, need_program

MODEL = "test-org/tiny-llama"
BLOCK_SIZE = 256 * 1024


sha256_file = file_sha256  # the helper every test imports from here


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Origin directory with a ~24 MiB generated model in 3 shards (+ a nested file)."""
    root = tmp_path_factory.mktemp("origin")
    model = generate_model(root / MODEL, ModelShape(hidden=256, intermediate=704, layers=14, heads=4,
                                                    kv_heads=4, vocab=4096), shard_bytes=8 << 20)
    (model / "extra").mkdir()
    (model / "extra" / "notes.txt").write_text("nested file\n" * 100)
    return root


@pytest.fixture(scope="session")
def origin_hashes(models_dir: Path) -> dict[str, str]:
    base = models_dir / MODEL
    return {p.relative_to(base).as_posix(): sha256_file(p) for p in base.rglob("*") if p.is_file()}


@pytest.fixture
def start_server(tmp_path: Path, models_dir: Path) -> Iterator:
    """Factory: start (and always stop) mxfs server processes."""
    procs: list[ServerProc] = []

    def start(**kw) -> ServerProc:
        kw.setdefault("block_size", BLOCK_SIZE)
        proc = ServerProc(kw.pop("models_dir", models_dir), tmp_path / f"server-cache-{len(procs)}", **kw)
        procs.append(proc)
        return proc.start()

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def start_mount(tmp_path: Path) -> Iterator:
    """Factory: start (and always stop) node daemons."""
    need_fuse()
    procs: list[MountProc] = []

    def start(server: ServerProc, name: str = "node", wait_model: str | None = MODEL,
              extra: list[str] | None = None) -> MountProc:
        proc = MountProc(tmp_path / name / "mnt", tmp_path / name / "cache", server.address, extra or [])
        procs.append(proc)
        return proc.start(wait_model=wait_model)

    yield start
    stop_all(procs)  # fails the test if a daemon did not remove its own mount


@dataclass
class MountedModel:
    mountpoint: Path
    models_dir: Path
    model: str
    server: ServerProc
    daemon: MountProc

    @property
    def model_dir(self) -> Path:
        return self.mountpoint / self.model

    @property
    def origin_dir(self) -> Path:
        return self.models_dir / self.model


@pytest.fixture
def mxfs_mount(start_server, start_mount, models_dir: Path) -> MountedModel:
    """A live mount (server + daemon on 127.0.0.1) of the generated test model."""
    server = start_server()
    daemon = start_mount(server)
    return MountedModel(daemon.mountpoint, models_dir, MODEL, server, daemon)


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """A registry store, once embedded (sqlite) and once on the real redis-server."""
    import uuid

    from mxfs.registry.store import EmbeddedStore, RedisStore

    if request.param == "embedded":
        s = EmbeddedStore(tmp_path / "registry.sqlite3")
    else:
        redis_server = request.getfixturevalue("redis_server")
        s = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}:")
    yield s
    s.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real redis-server on 127.0.0.1 for the whole session (flushed per test by users)."""
    from tests.support.cluster import RedisProc

    need_program("redis-server", "apt-get install redis-server")

    proc = RedisProc(tmp_path_factory.mktemp("redis")).start()
    yield proc
    proc.stop()
