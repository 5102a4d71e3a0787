"""The CSI plugin touches only its own volumes inside the kubelet directory; branches resolve
through the node daemon; NodeGetVolumeStats follows the spec's error table."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from mxfs.rpc import csi_pb2
from mxfs_csi import mounts
from tests.csi.csi_fixtures import Csi, NodeMountFixture, publish_request, tree_digest, write_model
from tests.support.hf_endpoint import HubEndpoint


def code_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    return err.value.code()


def entries_at(target: Path) -> list[mounts.MountEntry]:
    return [e for e in mounts.read_mountinfo() if e.mount_point == str(target)]


def unpublish_request(target: Path) -> csi_pb2.NodeUnpublishVolumeRequest:
    return csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol", target_path=str(target))


def stats_request(path: Path) -> csi_pb2.NodeGetVolumeStatsRequest:
    return csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol", volume_path=str(path))


@pytest.fixture
def outside(short_tmp: Path) -> Path:
    """A directory outside the kubelet directory (the tests' tmp_path) with a file in it."""
    path = short_tmp / "outside"
    path.mkdir()
    (path / "precious").write_text("keep me")
    return path


def test_publish_refuses_targets_outside_the_kubelet_dir(csi: Csi, tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "pods" / "link"
    link.parent.mkdir()
    link.symlink_to(outside)
    escaping_link = tmp_path / "pods" / "escape"
    escaping_link.symlink_to(outside / "target")
    for target in (outside / "target", link / "target", tmp_path / ".." / "x", tmp_path, escaping_link):
        request = publish_request(target, csi.mount.model)
        assert code_of(csi.node.NodePublishVolume, request) == grpc.StatusCode.INVALID_ARGUMENT, target
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]  # nothing created or mounted there
    assert not [e for e in mounts.read_mountinfo() if e.mount_point.startswith(str(outside))]


def test_unpublish_never_touches_what_the_driver_did_not_publish(csi: Csi, tmp_path: Path, outside: Path) -> None:
    # outside the kubelet dir: refused, the file stays
    assert code_of(csi.node.NodeUnpublishVolume, unpublish_request(outside / "precious")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert (outside / "precious").read_text() == "keep me"

    # a file inside: left alone (the driver only ever creates directories)
    file_target = tmp_path / "a-file"
    file_target.write_text("not yours")
    csi.node.NodeUnpublishVolume(unpublish_request(file_target), timeout=30)
    assert file_target.read_text() == "not yours"

    # a directory with content: left alone
    full = tmp_path / "full-dir"
    full.mkdir()
    (full / "data").write_text("x")
    csi.node.NodeUnpublishVolume(unpublish_request(full), timeout=30)
    assert (full / "data").exists()

    # a foreign mount (not the node mount's filesystem): refused, still mounted
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", str(foreign)], check=True, timeout=30)
    try:
        (foreign / "inside").write_text("someone's data")
        assert code_of(csi.node.NodeUnpublishVolume, unpublish_request(foreign)) == \
            grpc.StatusCode.FAILED_PRECONDITION
        assert entries_at(foreign) and (foreign / "inside").read_text() == "someone's data"
        assert code_of(csi.node.NodeGetVolumeStats, stats_request(foreign)) == grpc.StatusCode.NOT_FOUND
        assert code_of(csi.node.NodePublishVolume, publish_request(foreign, csi.mount.model)) == \
            grpc.StatusCode.ALREADY_EXISTS
    finally:
        subprocess.run(["umount", str(foreign)], timeout=30)

    # a symlink placed at a target is never followed
    link = tmp_path / "link"
    link.symlink_to(outside)
    csi.node.NodeUnpublishVolume(unpublish_request(link), timeout=30)
    assert link.is_symlink() and (outside / "precious").exists()
    assert code_of(csi.node.NodePublishVolume, publish_request(link, csi.mount.model)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_volume_stats_of_a_path_without_a_volume_is_not_found(csi: Csi, tmp_path: Path, outside: Path) -> None:
    target = tmp_path / "target"
    csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=30)
    assert csi.node.NodeGetVolumeStats(stats_request(target), timeout=30).usage
    for path in (outside, outside / "nothing", tmp_path / "nothing", tmp_path, csi.mount.mountpoint):
        assert code_of(csi.node.NodeGetVolumeStats, stats_request(path)) == grpc.StatusCode.NOT_FOUND, path


def test_a_branch_other_than_main_publishes_from_a_real_mount(
    start_server, start_mount, serve_csi, monkeypatch, tmp_path: Path
) -> None:
    hub = HubEndpoint().start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("MODEL_EXPRESS_SERVER_ORIGINS", "hf")
        for version, seed in (("v1", 1), ("v2", 2)):
            write_model(tmp_path / version, seed=seed)  # (not safetensors inside: a plain blob)
            (tmp_path / version / "model.safetensors").rename(tmp_path / version / "weights.bin")
        main = hub.add_dir("acme/branched", tmp_path / "v1")
        dev = hub.add_dir("acme/branched", tmp_path / "v2", branch="dev")
        assert main != dev
        (tmp_path / "empty").mkdir()  # a --models-dir that does not exist stops the start
        server = start_server(models_dir=tmp_path / "empty")
        daemon = start_mount(server, wait_model=None)
        csi = serve_csi(NodeMountFixture(daemon.mountpoint, tmp_path, "acme/branched"))

        for branch, want in (("dev", tmp_path / "v2"), ("main", tmp_path / "v1")):
            target = tmp_path / "pods" / branch
            target.parent.mkdir(exist_ok=True)
            context = {"model": "acme/branched", "revision": branch}
            csi.node.NodePublishVolume(publish_request(target, "acme/branched", volume_context=context), timeout=120)
            assert tree_digest(target) == tree_digest(want), branch
            csi.node.NodeUnpublishVolume(unpublish_request(target), timeout=30)
            assert not target.exists()

        missing = publish_request(tmp_path / "pods" / "nope", "acme/branched",
                                  volume_context={"model": "acme/branched", "revision": "no-such-branch"})
        assert code_of(csi.node.NodePublishVolume, missing) == grpc.StatusCode.NOT_FOUND
    finally:
        hub.stop()
