"""CSI Identity service: who the plugin is and whether it is ready."""

from __future__ import annotations

import grpc

import mxfs
from mxfs.rpc import csi_pb2, csi_pb2_grpc
from mxfs_csi.nodemount import NodeMount
from mxfs_csi.status import rpc


class IdentityService(csi_pb2_grpc.IdentityServicer):
    """GetPluginInfo, GetPluginCapabilities and a Probe backed by the node mount."""

    def __init__(self, driver_name: str, node_mount: NodeMount) -> None:
        self.driver_name = driver_name
        self.node_mount = node_mount

    @rpc
    def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(
            name=self.driver_name,
            vendor_version=mxfs.__version__,
            manifest={"mountpoint": str(self.node_mount.mountpoint)},
        )

    @rpc
    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        # Node-only plugin: no controller service, every node can serve every model.
        return csi_pb2.GetPluginCapabilitiesResponse()

    @rpc
    def Probe(self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext) -> csi_pb2.ProbeResponse:
        response = csi_pb2.ProbeResponse()
        response.ready.value = self.node_mount.ready()
        return response
