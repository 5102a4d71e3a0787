"""Identity service over the real unix socket: plugin info, capabilities, Probe."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import mxfs
from mxfs.rpc import csi_pb2, csi_pb2_grpc
from mxfs_csi.server import CsiConfig, build_server
from tests.csi.csi_fixtures import DRIVER, Csi, mount_dead_fuse, unmount_everything_under


def test_get_plugin_info(csi: Csi) -> None:
    info = csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
    assert info.name == DRIVER
    assert info.vendor_version == mxfs.__version__
    assert info.manifest["mountpoint"] == str(csi.mount.mountpoint)


def test_get_plugin_capabilities_is_node_only(csi: Csi) -> None:
    caps = csi.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest(), timeout=10)
    services = [c.service.type for c in caps.capabilities if c.HasField("service")]
    assert csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE not in services


def test_probe_ready_when_the_node_mount_serves(csi: Csi) -> None:
    probe = csi.identity.Probe(csi_pb2.ProbeRequest(), timeout=10)
    assert probe.HasField("ready") and probe.ready.value is True


def _probe(mountpoint: Path, sock_dir: Path) -> csi_pb2.ProbeResponse:
    sock = sock_dir / "p.sock"
    server = build_server(CsiConfig(f"unix://{sock}", "n", mountpoint, DRIVER))
    try:
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            return csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=10)
    finally:
        server.stop(None).wait()


def test_probe_not_ready_before_the_daemon_mounts(tmp_path: Path, short_tmp: Path) -> None:
    mountpoint = tmp_path / "not-yet"
    mountpoint.mkdir()
    probe = _probe(mountpoint, short_tmp)
    assert probe.HasField("ready") and probe.ready.value is False


def test_probe_fails_when_the_daemon_died(tmp_path: Path, short_tmp: Path) -> None:
    mountpoint = tmp_path / "dead"
    mountpoint.mkdir()
    mount_dead_fuse(mountpoint)
    try:
        with pytest.raises(grpc.RpcError) as err:
            _probe(mountpoint, short_tmp)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        unmount_everything_under(tmp_path)
