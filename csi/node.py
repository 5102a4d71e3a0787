"""CSI Node service: checks each request against the spec, then publishes models."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from mxfs.errors import MxfsError
from mxfs.nodectl import hydrate_model
from mxfs.rpc import csi_pb2, csi_pb2_grpc
from mxfs_csi import DEFAULT_KUBELET_DIR
from mxfs_csi.nodemount import NodeMount
from mxfs_csi.publisher import Publisher, canonical_target
from mxfs_csi.status import (
    failed_precondition,
    invalid_argument,
    is_stale,
    not_found,
    rpc,
    unavailable,
)
from mxfs_csi.volume import parse_volume_context

Mode = csi_pb2.VolumeCapability.AccessMode
RpcType = csi_pb2.NodeServiceCapability.RPC

_READER_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})
_WRITER_MODES = frozenset(
    {
        Mode.SINGLE_NODE_WRITER,
        Mode.SINGLE_NODE_SINGLE_WRITER,
        Mode.SINGLE_NODE_MULTI_WRITER,
        Mode.MULTI_NODE_SINGLE_WRITER,
        Mode.MULTI_NODE_MULTI_WRITER,
    }
)
_CAPABILITIES = (RpcType.GET_VOLUME_STATS, RpcType.VOLUME_CONDITION)


def _required(value: str, field: str) -> str:
    if not value:
        raise invalid_argument(f"{field} is required")
    return value


def _absolute_path(value: str, field: str) -> str:
    _required(value, field)
    if not os.path.isabs(value) or "\x00" in value:
        raise invalid_argument(f"{field} must be an absolute path, got {value!r}")
    return value


def wait_hydrated(source: os.PathLike[str], time_left_s: float | None) -> None:
    """Block until every file of the model at ``source`` is complete in the node cache.

    Runs the daemon's prefetch (a retried publish joins the same job); runs out with the
    call's deadline as UNAVAILABLE, so kubelet retries and the pod starts only once the
    model is local."""
    timeout = None if time_left_s is None else max(1.0, time_left_s - 1.0)
    try:
        last = hydrate_model(Path(source), timeout_s=timeout)
    except MxfsError as exc:
        raise unavailable(f"hydrating {source}: {exc}") from exc
    if not last.complete:
        raise unavailable(f"hydrating {source}: {last.error or 'not every file is complete yet'}")


def check_capability(capability: csi_pb2.VolumeCapability, readonly: bool) -> None:
    """Accept a filesystem volume that will be published read-only.

    Kubelet asks for SINGLE_NODE_WRITER for every inline (ephemeral) volume, so a
    writer mode is accepted only together with ``readonly`` (``readOnly: true`` in
    the pod spec); without it the request exceeds the volume's capabilities.
    """
    if not capability.HasField("access_mode"):
        raise invalid_argument("volume_capability.access_mode is required")
    mode = capability.access_mode.mode
    if mode not in _READER_MODES and mode not in _WRITER_MODES:
        raise invalid_argument(f"volume_capability.access_mode.mode {mode} is not a known mode")
    access_type = capability.WhichOneof("access_type")
    if access_type is None:
        raise invalid_argument("volume_capability needs an access type (mount)")
    if access_type != "mount":
        raise invalid_argument("mxfs volumes are filesystems: block access is not supported")
    if mode in _WRITER_MODES and not readonly:
        raise failed_precondition(f"mxfs volumes are read-only: access mode {Mode.Mode.Name(mode)} needs readonly=true")


def under(path: Path, root: Path) -> bool:
    """True if ``path`` is strictly inside ``root``."""
    return path != root and path.is_relative_to(root)


class NodeService(csi_pb2_grpc.NodeServicer):
    """NodePublish/Unpublish, NodeGetVolumeStats, NodeGetCapabilities, NodeGetInfo.

    Target paths are accepted only inside the kubelet directory (symlinks of their parents
    resolved), so a request can never mount over, unmount or remove anything else.
    """

    def __init__(self, node_id: str, node_mount: NodeMount, publisher: Publisher,
                 kubelet_dir: Path = DEFAULT_KUBELET_DIR) -> None:
        self.node_id = node_id
        self.node_mount = node_mount
        self.publisher = publisher
        self.kubelet_dir = Path(os.path.realpath(kubelet_dir))

    def _target(self, value: str, field: str) -> Path:
        target = canonical_target(_absolute_path(value, field))
        if not under(target, self.kubelet_dir):
            raise invalid_argument(f"{field} {value!r} is outside the kubelet directory {self.kubelet_dir}")
        return target

    @rpc
    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        _required(request.volume_id, "volume_id")
        target = self._target(request.target_path, "target_path")
        if not request.HasField("volume_capability"):
            raise invalid_argument("volume_capability is required")
        check_capability(request.volume_capability, request.readonly)
        volume = parse_volume_context(request.volume_context)
        source = self.node_mount.model_dir(volume)
        if volume.hydrate:
            wait_hydrated(source, context.time_remaining())
        self.publisher.publish(source, target)
        return csi_pb2.NodePublishVolumeResponse()

    @rpc
    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        _required(request.volume_id, "volume_id")
        self.publisher.unpublish(self._target(request.target_path, "target_path"))
        return csi_pb2.NodeUnpublishVolumeResponse()

    @rpc
    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        _required(request.volume_id, "volume_id")
        path = canonical_target(_absolute_path(request.volume_path, "volume_path"))
        if not under(path, self.kubelet_dir) or self.publisher.published_at(path) is None:
            # the spec's error table: no volume of this driver at volume_path is NOT_FOUND
            raise not_found(f"volume {request.volume_id} is not published at {path}")
        try:
            st = os.statvfs(path)
        except OSError as exc:
            if not is_stale(exc):
                raise
            condition = csi_pb2.VolumeCondition(abnormal=True, message=f"node daemon gone: {exc.strerror}")
            return csi_pb2.NodeGetVolumeStatsResponse(volume_condition=condition)
        Unit = csi_pb2.VolumeUsage.Unit
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                csi_pb2.VolumeUsage(
                    unit=Unit.BYTES,
                    total=st.f_blocks * st.f_frsize,
                    available=st.f_bavail * st.f_frsize,
                    used=(st.f_blocks - st.f_bfree) * st.f_frsize,
                ),
                csi_pb2.VolumeUsage(
                    unit=Unit.INODES,
                    total=st.f_files,
                    available=st.f_favail,
                    used=st.f_files - st.f_ffree,
                ),
            ],
            volume_condition=csi_pb2.VolumeCondition(abnormal=False, message="serving"),
        )

    @rpc
    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        caps = [csi_pb2.NodeServiceCapability(rpc=RpcType(type=t)) for t in _CAPABILITIES]
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=caps)

    @rpc
    def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self.node_id)
