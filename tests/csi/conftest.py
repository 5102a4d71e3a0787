"""Fixtures for the CSI tests: a node mount, a CSI server on its real unix socket, stubs.

Every test runs as root against the real kernel; whatever a test leaves mounted under
its tmp_path is unmounted at teardown.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mxfs.rpc import csi_pb2_grpc
from mxfs_csi.server import CsiConfig, build_server
from tests.csi.csi_fixtures import (
    COMMIT,
    DRIVER,
    NODE_ID,
    Csi,
    NodeMountFixture,
    bind,
    unmount_everything_under,
    write_model,
)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds 108 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="csi-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bind_node_mount(tmp_path: Path) -> Iterator[NodeMountFixture]:
    """Stand-in for the daemon's mount: the origin tree bind-mounted at a mountpoint.

    Holds ``acme/tiny`` (plain layout) and, in the Hugging Face layout,
    ``hub/models--acme--tiny/snapshots/<COMMIT>`` with ``refs/main`` naming it.
    """
    models = tmp_path / "origin"
    write_model(models / "acme" / "tiny", seed=1)
    write_model(models / "acme" / "other", seed=2)
    hub = models / "hub" / "models--acme--tiny"
    shutil.copytree(models / "acme" / "tiny", hub / "snapshots" / COMMIT)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(COMMIT)
    mountpoint = tmp_path / "node-mount"
    mountpoint.mkdir()
    bind(models, mountpoint)
    try:
        yield NodeMountFixture(mountpoint=mountpoint, models_dir=models, model="acme/tiny")
    finally:
        unmount_everything_under(tmp_path)


@pytest.fixture(params=["bind", "mxfs"])
def node_mount(request: pytest.FixtureRequest) -> NodeMountFixture:
    """The node mount the plugin serves from: the bind stand-in, then a real mxfs mount."""
    if request.param == "bind":
        return request.getfixturevalue("bind_node_mount")
    try:
        real = request.getfixturevalue("mxfs_mount")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no mxfs_mount fixture yet")
    return NodeMountFixture(real.mountpoint, real.models_dir, real.model)


def _serve(mount: NodeMountFixture, tmp_path: Path, sock_dir: Path) -> Iterator[Csi]:
    sock = sock_dir / "csi.sock"
    config = CsiConfig(
        endpoint=f"unix://{sock}",
        node_id=NODE_ID,
        mountpoint=mount.mountpoint,
        driver_name=DRIVER,
        kubelet_dir=tmp_path,  # the test's targets live in tmp_path, as pods' do in kubelet's dir
    )
    server = build_server(config)
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield Csi(
            socket=sock,
            identity=csi_pb2_grpc.IdentityStub(channel),
            node=csi_pb2_grpc.NodeStub(channel),
            mount=mount,
        )
    finally:
        channel.close()
        server.stop(None).wait()
        unmount_everything_under(tmp_path, keep=mount.mountpoint)  # the daemon unmounts its own


@pytest.fixture
def csi(bind_node_mount: NodeMountFixture, tmp_path: Path, short_tmp: Path) -> Iterator[Csi]:
    """CSI server over the bind stand-in (validation and error-path tests)."""
    yield from _serve(bind_node_mount, tmp_path, short_tmp)


@pytest.fixture
def csi_any(node_mount: NodeMountFixture, tmp_path: Path, short_tmp: Path) -> Iterator[Csi]:
    """CSI server over each node mount kind (data-path tests)."""
    yield from _serve(node_mount, tmp_path, short_tmp)


@pytest.fixture
def serve_csi(tmp_path: Path, short_tmp: Path) -> Iterator:
    """Factory: a CSI server over a given node mount (stopped at the end)."""
    running: list[Iterator[Csi]] = []

    def start(mount: NodeMountFixture) -> Csi:
        served = _serve(mount, tmp_path, short_tmp)
        running.append(served)
        return next(served)

    yield start
    for served in running:
        next(served, None)


@pytest.fixture
def csi_mxfs(mxfs_mount, tmp_path: Path, short_tmp: Path) -> Iterator[Csi]:
    """CSI server over a real mxfs mount (server + daemon processes), exposing the daemon."""
    mount = NodeMountFixture(mxfs_mount.mountpoint, mxfs_mount.models_dir, mxfs_mount.model)
    for csi in _serve(mount, tmp_path, short_tmp):
        csi.daemon = mxfs_mount.daemon
        csi.server = mxfs_mount.server
        yield csi
