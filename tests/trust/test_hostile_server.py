"""A hostile (or spoofed) server cannot make a node daemon write outside its cache.

The server here is a tiny in-test gRPC servicer: it serves the real test model, and for
``evil/<case>`` a manifest with one hostile field. The daemon (a real ``mxfs mount``
process) must refuse every one of them with an error, write nothing anywhere for them,
and keep serving the real model.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from mxfs.demo import free_port
from mxfs.manifest.model import Manifest, TensorInfo
from mxfs.origins.local import LocalOrigin
from mxfs.rpc import model_express_health_pb2_grpc, mxfs_pb2
from mxfs.rpc.convert import manifest_to_pb
from mxfs.server.catalog import ModelCatalog
from mxfs.server.metrics import ServerMetrics
from mxfs.server.service import HealthServicer, MxfsServicer, add_to_server
from tests.conftest import BLOCK_SIZE, MODEL, sha256_file

UP = "../../../../../.."  # from <cache>/manifests/evil/<case>/ (or blobs/xx/) well past tmp_path


def _shard(m: Manifest) -> str:
    return next(f.path for f in m.files if f.path.endswith(".safetensors"))


def _with_file(m: Manifest, target: str, **changes: object) -> Manifest:
    return replace(m, files=tuple(replace(f, **changes) if f.path == target else f for f in m.files))


#: case -> how to turn the real manifest (renamed to evil/<case>) into a hostile one
HOSTILE: dict[str, Callable[[Manifest, Path], Manifest]] = {
    "revision-traversal": lambda m, out: replace(m, revision=f"{UP}{out}/pwned-rev"),
    "digest-traversal": lambda m, out: _with_file(m, _shard(m), sha256=f"{UP}{out}/pwned-blob"),
    "path-traversal": lambda m, out: _with_file(m, "config.json", path=f"../{UP}{out}/pwned-path"),
    "absolute-path": lambda m, out: _with_file(m, "config.json", path=f"{out}/pwned-abs"),
    "nul-in-path": lambda m, out: _with_file(m, "config.json", path="con\x00fig.json"),
    "block-size-zero": lambda m, out: replace(m, block_size=0),
    "block-size-huge": lambda m, out: replace(m, block_size=1 << 31),
    "size-huge": lambda m, out: _with_file(m, "config.json", size=1 << 62),
    "tensor-outside-file": lambda m, out: _with_file(
        m, _shard(m), tensors=(TensorInfo("w", "F32", (4,), 0, 1 << 40),)),
    "wrong-model": lambda m, out: replace(m, name=MODEL),
}


class HostileServicer(MxfsServicer):
    """The real servicer, except that ``evil/<case>`` answers a hostile manifest."""

    def __init__(self, catalog: ModelCatalog, outside: Path) -> None:
        super().__init__(catalog, ServerMetrics(), 1 << 20)
        self.outside = outside
        self.asked: list[str] = []

    def GetManifest(self, request: mxfs_pb2.ModelRequest, context: grpc.ServicerContext) -> mxfs_pb2.Manifest:
        org, _, case = request.name.partition("/")
        if org != "evil" or case not in HOSTILE:
            return super().GetManifest(request, context)
        self.asked.append(case)
        real = replace(self.catalog.resolve(MODEL, ""), name=request.name)
        return manifest_to_pb(HOSTILE[case](real, self.outside))

    def ReadRange(self, request: mxfs_pb2.RangeRequest, context: grpc.ServicerContext):
        if request.name.startswith("evil/"):  # serve the real bytes, so a write would really happen
            request.name = MODEL
        return super().ReadRange(request, context)


@pytest.fixture
def hostile_server(tmp_path: Path, models_dir: Path) -> Iterator[tuple[str, HostileServicer]]:
    state = tmp_path / "server-state"
    state.mkdir()
    catalog = ModelCatalog([LocalOrigin(models_dir, state)], state, BLOCK_SIZE)
    servicer = HostileServicer(catalog, tmp_path / "outside")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add_to_server(servicer, server)
    model_express_health_pb2_grpc.add_HealthServiceServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


def test_hostile_manifests_write_nothing_outside_the_cache(tmp_path: Path, hostile_server, start_mount,
                                                           models_dir: Path) -> None:
    address, servicer = hostile_server
    daemon = start_mount(type("S", (), {"address": address})())
    good = daemon.mountpoint / MODEL
    shard = next(p.name for p in (models_dir / MODEL).iterdir() if p.name.endswith(".safetensors"))
    accepted = []
    for case in HOSTILE:
        model = daemon.mountpoint / "evil" / case
        try:  # the lookup must fail with EIO or ENOENT
            names = os.listdir(model)
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ENOENT), (case, exc)
        else:
            accepted.append(case)
            for name in names:  # reading is what would write blobs
                try:
                    with open(model / name, "rb") as fh:
                        fh.read()
                except OSError:
                    pass
        assert daemon.proc.poll() is None, f"{case} killed the daemon: {daemon.log()}"
        # the daemon keeps serving the real model, byte for byte
        assert sha256_file(good / "config.json") == sha256_file(models_dir / MODEL / "config.json")
    assert sha256_file(good / shard) == sha256_file(models_dir / MODEL / shard)
    assert set(servicer.asked) == set(HOSTILE), "every hostile manifest was actually served"
    assert not accepted, f"the daemon accepted hostile manifests: {accepted}"
    escaped = [p for p in tmp_path.rglob("*pwned*")]
    assert not escaped, f"hostile values named files: {escaped}"
    assert not (tmp_path / "outside").exists()
    assert "not a 40-hex" in daemon.log() and "64-hex" in daemon.log()
