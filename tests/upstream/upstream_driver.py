"""Drives the REAL ModelExpress client (PyPI ``modelexpress``) for the tests, in its own process.

Never imports mxfs: ModelExpress's generated stubs and mxfs's define the same protobuf
symbols (``model_express.p2p.*``), which one process's descriptor pool cannot hold twice.
Run it from a directory outside the ``modelexpress`` package (its ``types.py`` shadows the
stdlib). Reads one JSON command per stdin line, answers one JSON line on stdout.
"""

from __future__ import annotations

import base64
import json
import sys
import traceback

import grpc
from google.protobuf import json_format
from modelexpress import p2p_pb2, p2p_pb2_grpc
from modelexpress.client import MxClient
from modelexpress.metadata.source_id import compute_mx_source_id


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def without_status(worker: p2p_pb2.WorkerMetadata) -> bytes:
    """The worker's bytes minus what the server owns (status, updated_at)."""
    copy = p2p_pb2.WorkerMetadata()
    copy.CopyFrom(worker)
    copy.ClearField("status")
    copy.ClearField("updated_at")
    return copy.SerializeToString(deterministic=True)


def run(client: MxClient, channel: grpc.Channel, cmd: dict) -> dict:
    op = cmd["op"]
    if op == "publish":
        identity = json_format.ParseDict(cmd["identity"], p2p_pb2.SourceIdentity())
        worker = json_format.ParseDict(cmd["worker"], p2p_pb2.WorkerMetadata())
        sid = client.publish_metadata(identity, worker, cmd["worker_id"])
        return {"mx_source_id": sid, "computed": compute_mx_source_id(identity),
                "worker": b64(without_status(worker))}
    if op == "list":
        identity = json_format.ParseDict(cmd["identity"], p2p_pb2.SourceIdentity()) if "identity" in cmd else None
        reply = client.list_sources(identity, cmd.get("status_filter"))
        return json_format.MessageToDict(reply, preserving_proto_field_name=True)
    if op == "get":
        reply = client.get_metadata(cmd["mx_source_id"], cmd["worker_id"])
        return {"found": reply.found, "status": reply.worker.status, "updated_at": reply.worker.updated_at,
                "worker": b64(without_status(reply.worker)), "identity_source_id": compute_mx_source_id(reply.identity),
                "tensors": [json_format.MessageToDict(t, preserving_proto_field_name=True)
                            for t in reply.worker.tensor_source.tensors],
                "nixl_metadata": b64(reply.worker.nixl_metadata), "agent_name": reply.worker.agent_name}
    if op == "update":
        return {"success": client.update_status(cmd["mx_source_id"], cmd["worker_id"], cmd.get("rank", 0),
                                                cmd["status"], cmd.get("source_load"))}
    if op == "descriptor":  # the schema ModelExpress's stubs were generated from
        from google.protobuf import descriptor_pb2

        proto = descriptor_pb2.FileDescriptorProto()
        p2p_pb2.DESCRIPTOR.CopyToProto(proto)
        return {"file": b64(proto.SerializeToString())}
    if op == "raw":  # a request as bytes, to see the status code the server answers
        call = channel.unary_unary(cmd["method"], request_serializer=None, response_deserializer=None)
        try:
            reply = call(base64.b64decode(cmd["body"]), timeout=10)
        except grpc.RpcError as exc:
            return {"code": exc.code().name}
        return {"code": "OK", "reply": b64(reply)}
    if op == "health":
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=cmd["service"]),
                                                              timeout=10)
        except grpc.RpcError as exc:
            return {"code": exc.code().name}
        return {"code": "OK", "status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}
    if op == "download":
        from pathlib import Path

        from modelexpress.model_client import ModelCacheClient

        with ModelCacheClient(client.server_url, cache_directory=cmd["cache_dir"]) as mc:
            snapshot = mc.install_metadata_snapshot(cmd["model"])
            mc.install_weight_files(cmd["model"], Path(snapshot))
        return {"snapshot": str(snapshot)}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    server = sys.argv[1]
    client = MxClient(server)
    channel = grpc.insecure_channel(server)
    print(json.dumps({"ready": p2p_pb2_grpc.__name__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out = {"ok": True, **run(client, channel, json.loads(line))}
        except Exception as exc:  # reported to the test, which decides
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        print(json.dumps(out), flush=True)
    client.close()
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
