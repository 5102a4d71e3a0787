"""Publish/unpublish with real read-only bind mounts, over the stand-in and a real mxfs mount."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from mxfs.rpc import csi_pb2
from mxfs_csi import mounts
from tests.csi.csi_fixtures import (
    NODE_ID,
    Csi,
    bind,
    mount_capability,
    mount_dead_fuse,
    publish_request,
    tree_digest,
    unmount_everything_under,
)

Mode = csi_pb2.VolumeCapability.AccessMode
RpcType = csi_pb2.NodeServiceCapability.RPC


def entries_at(target: Path) -> list[mounts.MountEntry]:
    return [e for e in mounts.read_mountinfo() if e.mount_point == str(target)]


def unpublish(csi: Csi, target: Path) -> None:
    csi.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol", target_path=str(target)), timeout=30
    )


def test_publish_is_a_read_only_bind_with_identical_bytes(csi_any: Csi, tmp_path: Path) -> None:
    csi = csi_any
    origin = csi.mount.models_dir / csi.mount.model
    target = tmp_path / "pod" / "volumes" / "model"
    target.parent.mkdir(parents=True)
    csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=120)

    [entry] = entries_at(target)
    assert entry.read_only and {"nosuid", "nodev"} <= entry.options
    assert tree_digest(target) == tree_digest(origin)  # every file, byte for byte
    assert tree_digest(target)  # and there were files

    a_file = next(p for p in target.rglob("*") if p.is_file())
    for attempt in (
        lambda: a_file.open("r+b"),
        lambda: (target / "new-file").write_bytes(b"x"),
        lambda: a_file.unlink(),
        lambda: (target / "new-dir").mkdir(),
        lambda: os.truncate(a_file, 0),
    ):
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno == errno.EROFS
    assert tree_digest(target) == tree_digest(origin)

    unpublish(csi, target)
    assert not entries_at(target) and not target.exists()
    assert tree_digest(origin)  # the origin is untouched


def test_publish_and_unpublish_are_idempotent(csi_any: Csi, tmp_path: Path) -> None:
    csi = csi_any
    target = tmp_path / "target"
    request = publish_request(target, csi.mount.model)
    for _ in range(3):
        csi.node.NodePublishVolume(request, timeout=120)
        assert len(entries_at(target)) == 1
    # the same volume with other non-secret arguments stays compatible (it is read-only)
    csi.node.NodePublishVolume(publish_request(target, csi.mount.model, readonly=False), timeout=120)
    assert len(entries_at(target)) == 1
    for _ in range(3):
        unpublish(csi, target)
        assert not entries_at(target) and not target.exists()


def test_one_model_publishes_at_many_targets(csi_any: Csi, tmp_path: Path) -> None:
    csi = csi_any
    targets = [tmp_path / f"pod{i}" for i in range(4)]
    for target in targets:
        csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=120)
    digests = {str(tree_digest(t)) for t in targets}
    assert len(digests) == 1
    unpublish(csi, targets[0])
    assert tree_digest(targets[1])  # the others keep serving
    for target in targets[1:]:
        unpublish(csi, target)
    assert not any(t.exists() for t in targets)


def test_unpublish_of_an_unknown_target_succeeds(csi: Csi, tmp_path: Path) -> None:
    unpublish(csi, tmp_path / "never-published")
    unpublish(csi, tmp_path / "no" / "such" / "parent")
    empty = tmp_path / "empty-dir"  # a target whose publish failed half-way
    empty.mkdir()
    unpublish(csi, empty)
    assert not empty.exists()


def test_writer_mode_with_readonly_publishes_read_only(csi: Csi, tmp_path: Path) -> None:
    """Kubelet sends SINGLE_NODE_WRITER for every inline volume; readOnly: true makes it fit."""
    target = tmp_path / "inline"
    request = publish_request(target, csi.mount.model, volume_capability=mount_capability(Mode.SINGLE_NODE_WRITER))
    csi.node.NodePublishVolume(request, timeout=30)
    [entry] = entries_at(target)
    assert entry.read_only
    with pytest.raises(OSError) as err:
        (target / "x").write_bytes(b"")
    assert err.value.errno == errno.EROFS


def test_publish_cleans_a_target_left_by_a_crashed_daemon(csi: Csi, tmp_path: Path) -> None:
    target = tmp_path / "stale"
    target.mkdir()
    mount_dead_fuse(target)
    with pytest.raises(OSError) as err:
        os.stat(target)
    assert err.value.errno == errno.ENOTCONN

    csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=30)
    assert len(entries_at(target)) == 1
    assert (target / "config.json").read_bytes() == (
        csi.mount.models_dir / csi.mount.model / "config.json"
    ).read_bytes()


def test_unpublish_cleans_a_target_left_by_a_crashed_daemon(csi: Csi, tmp_path: Path) -> None:
    target = tmp_path / "stale"
    target.mkdir()
    mount_dead_fuse(target)
    unpublish(csi, target)
    assert not entries_at(target) and not target.exists()


def test_unpublish_peels_stacked_mounts(csi: Csi, tmp_path: Path) -> None:
    target = tmp_path / "stacked"
    target.mkdir()
    mount_dead_fuse(target)  # two crashed daemons' mounts, one on the other
    mount_dead_fuse(target)
    assert len(entries_at(target)) == 2
    unpublish(csi, target)
    assert not entries_at(target) and not target.exists()


def test_unpublish_leaves_a_foreign_mount_stacked_on_a_volume(csi: Csi, tmp_path: Path) -> None:
    target = tmp_path / "stacked"
    csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=30)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bind(elsewhere, target)  # someone else's mount on top of the volume
    assert len(entries_at(target)) == 2
    with pytest.raises(grpc.RpcError) as err:
        unpublish(csi, target)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(entries_at(target)) == 2  # neither mount was touched
    unmount_everything_under(target)  # (test clean-up: both go)


def test_volume_stats_and_condition(csi: Csi, tmp_path: Path) -> None:
    target = tmp_path / "target"
    csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=30)
    stats = csi.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol", volume_path=str(target)), timeout=30
    )
    units = {u.unit: u for u in stats.usage}
    vfs = os.statvfs(target)
    assert units[csi_pb2.VolumeUsage.BYTES].total == vfs.f_blocks * vfs.f_frsize
    assert units[csi_pb2.VolumeUsage.INODES].total == vfs.f_files
    assert stats.volume_condition.abnormal is False

    stale = tmp_path / "stale"
    stale.mkdir()
    mount_dead_fuse(stale)
    stats = csi.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol", volume_path=str(stale)), timeout=30
    )
    assert stats.volume_condition.abnormal is True and not stats.usage


def test_node_capabilities_and_info(csi: Csi) -> None:
    caps = csi.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=10)
    types = {c.rpc.type for c in caps.capabilities}
    assert types == {RpcType.GET_VOLUME_STATS, RpcType.VOLUME_CONDITION}
    assert RpcType.STAGE_UNSTAGE_VOLUME not in types  # publish needs no staging path
    info = csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
    assert info.node_id == NODE_ID
    assert info.max_volumes_per_node == 0 and not info.HasField("accessible_topology")


def test_concurrent_publishes_of_one_target_mount_once(csi: Csi, tmp_path: Path) -> None:
    target = tmp_path / "raced"
    request = publish_request(target, csi.mount.model)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: csi.node.NodePublishVolume(request, timeout=30), range(16)))
    assert len(entries_at(target)) == 1
    unpublish(csi, target)


def test_unpublish_after_the_node_mount_went_away(csi: Csi, tmp_path: Path) -> None:
    """Unpublish still works when the node mount went away under the pod's bind."""
    target = tmp_path / "target"
    csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=30)
    unmount_everything_under(csi.mount.mountpoint)
    with pytest.raises(grpc.RpcError):
        csi.node.NodePublishVolume(publish_request(tmp_path / "new", csi.mount.model), timeout=30)
    unpublish(csi, target)
    assert not target.exists()


def test_hydrate_attribute_publishes_only_a_fully_local_model(csi_mxfs: Csi, tmp_path: Path) -> None:
    from mxfs import nodectl

    target = tmp_path / "pod" / "volumes" / "model"
    target.parent.mkdir(parents=True)
    bad = publish_request(target, csi_mxfs.mount.model,
                          volume_context={"model": csi_mxfs.mount.model, "hydrate": "maybe"})
    with pytest.raises(grpc.RpcError) as err:
        csi_mxfs.node.NodePublishVolume(bad, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and not entries_at(target)
    request = publish_request(target, csi_mxfs.mount.model,
                              volume_context={"model": csi_mxfs.mount.model, "hydrate": "true"})
    csi_mxfs.node.NodePublishVolume(request, timeout=120)
    m = next(m for m in nodectl.status(csi_mxfs.mount.mountpoint).models if m.name == csi_mxfs.mount.model)
    assert m.complete_files == m.files > 0 and m.cached_bytes == m.total_bytes  # local before the pod sees it
    assert tree_digest(target) == tree_digest(csi_mxfs.mount.models_dir / csi_mxfs.mount.model)
    unpublish(csi_mxfs, target)


def test_hydrate_attribute_refuses_to_publish_while_the_model_cannot_be_hydrated(csi_mxfs: Csi,
                                                                                  tmp_path: Path) -> None:
    target = tmp_path / "pod" / "volumes" / "model"
    target.parent.mkdir(parents=True)
    csi_mxfs.server.stop(kill=True)  # the daemon stays up; its server goes away
    request = publish_request(target, csi_mxfs.mount.model,
                              volume_context={"model": csi_mxfs.mount.model, "hydrate": "true"})
    with pytest.raises(grpc.RpcError) as err:
        csi_mxfs.node.NodePublishVolume(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert not entries_at(target)
