"""A real node daemon killed under published volumes: Probe, stats and cleanup behave."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import pytest

from mxfs.rpc import csi_pb2
from tests.csi.csi_fixtures import Csi, publish_request, tree_digest


def test_killed_daemon_is_reported_and_its_volumes_clean_up(csi_mxfs: Csi, tmp_path: Path) -> None:
    csi = csi_mxfs
    target = tmp_path / "pod-volume"
    csi.node.NodePublishVolume(publish_request(target, csi.mount.model), timeout=120)
    assert tree_digest(target) == tree_digest(csi.mount.models_dir / csi.mount.model)

    csi.daemon.stop(kill=True)  # SIGKILL: the FUSE connection dies under the bind mount

    with pytest.raises(OSError) as err:
        os.statvfs(target)  # (a stat may still be answered from the kernel's attr cache)
    assert err.value.errno == errno.ENOTCONN
    with pytest.raises(grpc.RpcError) as rpc_err:
        csi.identity.Probe(csi_pb2.ProbeRequest(), timeout=10)
    assert rpc_err.value.code() == grpc.StatusCode.UNAVAILABLE
    stats = csi.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="v", volume_path=str(target)), timeout=10
    )
    assert stats.volume_condition.abnormal is True
    with pytest.raises(grpc.RpcError) as rpc_err:
        csi.node.NodePublishVolume(publish_request(tmp_path / "new", csi.mount.model), timeout=30)
    assert rpc_err.value.code() == grpc.StatusCode.UNAVAILABLE

    csi.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path=str(target)), timeout=30)
    assert not target.exists()
