"""ModelExpress-compatible ``model_express.api.ApiService``: the "ping" a client sends first."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import grpc

from mxfs.rpc import model_express_api_pb2 as pb
from mxfs.rpc import model_express_api_pb2_grpc as pb_grpc
from mxfs.server.errors import rpc
from mxfs.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from mxfs.server.app import ServerContext

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ApiService"].full_name


class ApiServicer(pb_grpc.ApiServiceServicer):
    """``ping`` answers ``{"message": "pong"}``; any other action is answered success=false."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    @rpc("api.SendRequest")
    def SendRequest(self, request: pb.ApiRequest, context: grpc.ServicerContext) -> pb.ApiResponse:
        if request.action == "ping":
            return pb.ApiResponse(success=True, data=json.dumps({"message": "pong"}).encode())
        return pb.ApiResponse(success=False, error=f"Unknown action: {request.action}")


def install(ctx: ServerContext) -> None:
    """SERVICE_PLUGINS hook."""
    pb_grpc.add_ApiServiceServicer_to_server(ApiServicer(ctx.metrics), ctx.grpc_server)
    ctx.services.append(SERVICE_NAME)
