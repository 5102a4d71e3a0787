"""Every missing or invalid field of the Node RPCs answers the CSI spec's status code."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from mxfs.rpc import csi_pb2
from tests.csi.csi_fixtures import COMMIT, Csi, mount_capability, publish_request, unmount_everything_under

Mode = csi_pb2.VolumeCapability.AccessMode
WRITER_MODES = [
    Mode.SINGLE_NODE_WRITER,
    Mode.SINGLE_NODE_SINGLE_WRITER,
    Mode.SINGLE_NODE_MULTI_WRITER,
    Mode.MULTI_NODE_SINGLE_WRITER,
    Mode.MULTI_NODE_MULTI_WRITER,
]


def code_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value.code()


def no_mount_left(target: Path) -> bool:
    return not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize(
    "overrides",
    [
        {"volume_id": ""},
        {"target_path": ""},
        {"target_path": "relative/target"},
        {"volume_capability": None},
        {"volume_capability": csi_pb2.VolumeCapability(mount={})},  # no access_mode
        {"volume_capability": mount_capability(Mode.UNKNOWN)},
        {"volume_capability": mount_capability(99)},
        {  # no access type
            "volume_capability": csi_pb2.VolumeCapability(access_mode=Mode(mode=Mode.MULTI_NODE_READER_ONLY))
        },
        {  # block volumes are not supported
            "volume_capability": csi_pb2.VolumeCapability(block={}, access_mode=Mode(mode=Mode.MULTI_NODE_READER_ONLY))
        },
        {"volume_context": {}},
        {"volume_context": {"model": "no-slash"}},
        {"volume_context": {"model": "../etc"}},
        {"volume_context": {"model": "acme/../tiny"}},
        {"volume_context": {"model": "acme/tiny@"}},
        {"volume_context": {"model": "acme/tiny", "revision": "../x"}},
        {"volume_context": {"model": "acme/tiny@main", "revision": "v2"}},
        {"volume_context": {"model": "acme/tiny", "uri": "hf://acme/tiny"}},
        {"volume_context": {"uri": "s3://bucket/acme/tiny"}},
        {"volume_context": {"uri": "acme/tiny"}},
    ],
    ids=lambda o: next(iter(o)) + "=" + repr(next(iter(o.values())))[:40],
)
def test_publish_invalid_argument(csi: Csi, tmp_path: Path, overrides: dict) -> None:
    target = tmp_path / "target"
    fields = {k: v for k, v in overrides.items() if v is not None}
    request = publish_request(target, csi.mount.model, **fields)
    for name, value in overrides.items():
        if value is None:
            request.ClearField(name)
    assert code_of(csi.node.NodePublishVolume, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert no_mount_left(target)


@pytest.mark.parametrize("mode", WRITER_MODES, ids=lambda m: Mode.Mode.Name(m))
def test_publish_refuses_write_access(csi: Csi, tmp_path: Path, mode: int) -> None:
    target = tmp_path / "target"
    request = publish_request(target, csi.mount.model, volume_capability=mount_capability(mode), readonly=False)
    assert code_of(csi.node.NodePublishVolume, request) == grpc.StatusCode.FAILED_PRECONDITION
    assert no_mount_left(target)


@pytest.mark.parametrize(
    "context",
    [
        {"model": "acme/missing"},
        {"uri": "hf://nobody/nothing"},
        {"model": "acme/tiny", "revision": "f" * 40},
        {"model": "acme/tiny", "revision": "no-such-branch"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())[:50],
)
def test_publish_unknown_model_is_not_found(csi: Csi, tmp_path: Path, context: dict) -> None:
    target = tmp_path / "target"
    request = publish_request(target, csi.mount.model, volume_context=context)
    assert code_of(csi.node.NodePublishVolume, request) == grpc.StatusCode.NOT_FOUND
    assert no_mount_left(target)


def test_publish_while_the_node_mount_is_down_is_unavailable(csi: Csi, tmp_path: Path) -> None:
    unmount_everything_under(csi.mount.mountpoint)
    request = publish_request(tmp_path / "target", csi.mount.model)
    assert code_of(csi.node.NodePublishVolume, request) == grpc.StatusCode.UNAVAILABLE


def test_publish_over_another_volume_is_already_exists(csi: Csi, tmp_path: Path) -> None:
    target = tmp_path / "target"
    csi.node.NodePublishVolume(publish_request(target, "acme/tiny"), timeout=30)
    other = publish_request(target, "acme/other")
    assert code_of(csi.node.NodePublishVolume, other) == grpc.StatusCode.ALREADY_EXISTS
    # the first volume is untouched
    assert (target / "config.json").read_text() == (csi.mount.models_dir / "acme" / "tiny" / "config.json").read_text()


def test_pinned_and_branch_revisions_publish(csi: Csi, tmp_path: Path) -> None:
    for i, context in enumerate(
        [
            {"model": "acme/tiny", "revision": COMMIT},
            {"model": f"acme/tiny@{COMMIT}"},
            {"uri": "hf://acme/tiny@main"},
            {"uri": f"mx://acme/tiny@{COMMIT}"},
        ]
    ):
        target = tmp_path / f"t{i}"
        csi.node.NodePublishVolume(publish_request(target, "acme/tiny", volume_context=context), timeout=30)
        assert (target / "model.safetensors").stat().st_size == 3 * 1024 * 1024 + 17


@pytest.mark.parametrize(
    "request_",
    [
        csi_pb2.NodeUnpublishVolumeRequest(target_path="/tmp/x"),
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="v"),
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path="rel/path"),
    ],
    ids=["no-volume-id", "no-target", "relative-target"],
)
def test_unpublish_invalid_argument(csi: Csi, request_) -> None:
    assert code_of(csi.node.NodeUnpublishVolume, request_) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "request_",
    [
        csi_pb2.NodeGetVolumeStatsRequest(volume_path="/tmp/x"),
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="v"),
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="v", volume_path="rel"),
    ],
    ids=["no-volume-id", "no-path", "relative-path"],
)
def test_volume_stats_invalid_argument(csi: Csi, request_) -> None:
    assert code_of(csi.node.NodeGetVolumeStats, request_) == grpc.StatusCode.INVALID_ARGUMENT


def test_volume_stats_of_an_unpublished_path_is_not_found(csi: Csi, tmp_path: Path) -> None:
    for path in (tmp_path / "never-existed", tmp_path):
        request = csi_pb2.NodeGetVolumeStatsRequest(volume_id="v", volume_path=str(path))
        assert code_of(csi.node.NodeGetVolumeStats, request) == grpc.StatusCode.NOT_FOUND


def test_unadvertised_node_rpcs_are_unimplemented(csi: Csi) -> None:
    channel = grpc.insecure_channel(f"unix://{csi.socket}")
    stage = channel.unary_unary("/csi.v1.Node/NodeStageVolume")
    with pytest.raises(grpc.RpcError) as err:
        stage(b"", timeout=10)
    channel.close()
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
