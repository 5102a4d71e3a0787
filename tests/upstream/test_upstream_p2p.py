"""ModelExpress's own client and stubs against a real ``mxfs server``: the P2P registry is a drop-in."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import grpc

from tests.conftest import MODEL, sha256_file

REVISION = "c" * 40
IDENTITY = {"mx_version": "0.7.0", "mx_source_type": "MX_SOURCE_TYPE_WEIGHTS", "model_name": MODEL,
            "backend_framework": "BACKEND_FRAMEWORK_VLLM", "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
            "expert_parallel_size": 1, "dtype": "bfloat16", "revision": REVISION,
            "extra_parameters": {"Role": "Source"}}
TENSORS = [{"name": "model.embed_tokens.weight", "addr": "140000000000", "size": "1048576", "device_id": 0,
            "dtype": "torch.bfloat16"},
           {"name": "lm_head.weight", "addr": "140000001000", "size": "1048576", "device_id": 0,
            "dtype": "torch.bfloat16"}]
WORKER = {"worker_rank": 0, "nixl_metadata": base64.b64encode(b"\x00agent-md\xff" * 50).decode(),
          "agent_name": "mx-agent-0", "accelerator": "cpu", "topology": {"rack": "r1"},
          "tensor_source": {"tensors": TENSORS}}
READY, STALE = "SOURCE_STATUS_READY", "SOURCE_STATUS_STALE"


def wait_for(cond, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def instances(up, **kw) -> list[dict]:
    return up.call("list", **kw).get("instances", [])


def test_publish_list_get_heartbeat_stale_reaped(start_server, upstream, registry_env):
    server = start_server()
    up = upstream(server.address)
    worker_id = uuid.uuid4().hex
    pub = up.call("publish", identity=IDENTITY, worker=WORKER, worker_id=worker_id)
    sid = pub["mx_source_id"]
    assert sid == pub["computed"] and len(sid) == 16  # the server's id is the client's own

    assert up.call("update", mx_source_id=sid, worker_id=worker_id, status=READY, source_load=0.25)["success"]
    listed = instances(up, identity=IDENTITY, status_filter=READY)
    assert [(i["mx_source_id"], i["worker_id"], i["model_name"], i["accelerator"]) for i in listed] == [
        (sid, worker_id, MODEL, "cpu")]
    assert listed[0]["topology"] == {"rack": "r1"} and listed[0]["source_load"] == 0.25

    got = up.call("get", mx_source_id=sid, worker_id=worker_id)
    assert got["found"] and got["status"] == 2 and got["updated_at"] > 0
    assert got["worker"] == pub["worker"]  # byte-exact apart from status/updated_at, which the server owns
    assert got["identity_source_id"] == sid

    def stale() -> bool:
        return [i["worker_id"] for i in instances(up, status_filter=STALE)] == [worker_id]

    # heartbeats keep it READY past the heartbeat timeout (3 s)
    beat_until = time.monotonic() + 4
    while time.monotonic() < beat_until:
        assert up.call("update", mx_source_id=sid, worker_id=worker_id, status=READY)["success"]
        assert not stale()
        time.sleep(0.2)
    assert [i["worker_id"] for i in instances(up, status_filter=READY)] == [worker_id]

    # heartbeats stop: STALE after the timeout, then deleted after the GC timeout
    assert wait_for(stale)
    assert instances(up, status_filter=READY) == []
    assert up.call("get", mx_source_id=sid, worker_id=worker_id)["status"] == 3
    assert wait_for(lambda: instances(up) == [])
    assert not up.call("get", mx_source_id=sid, worker_id=worker_id)["found"]
    # a heartbeat for the reaped worker is rejected, so the client re-publishes
    assert not up.call("update", mx_source_id=sid, worker_id=worker_id, status=READY)["success"]


def test_filters_and_shutdown_stale(start_server, upstream, registry_env):
    server = start_server()
    up = upstream(server.address)
    other = dict(IDENTITY, dtype="float16")
    a = up.call("publish", identity=IDENTITY, worker=WORKER, worker_id="w-a")["mx_source_id"]
    b = up.call("publish", identity=other, worker=dict(WORKER, worker_rank=1), worker_id="w-b")["mx_source_id"]
    assert a != b
    for sid, wid, rank in ((a, "w-a", 0), (b, "w-b", 1)):
        assert up.call("update", mx_source_id=sid, worker_id=wid, rank=rank, status=READY)["success"]
    assert [i["worker_id"] for i in instances(up, identity=other)] == ["w-b"]
    assert {i["worker_id"] for i in instances(up, status_filter=READY)} == {"w-a", "w-b"}
    # the client's shutdown path: UpdateStatus(STALE) takes it out of READY listings at once
    assert up.call("update", mx_source_id=a, worker_id="w-a", status=STALE)["success"]
    assert [i["worker_id"] for i in instances(up, status_filter=READY)] == ["w-b"]
    assert not up.call("update", mx_source_id=a, worker_id="w-a", rank=5, status=READY)["success"]


def test_api_ping_and_health_per_service(start_server, upstream):
    server = start_server()
    up = upstream(server.address)
    for name in ("", "model_express.p2p.P2pService", "model_express.api.ApiService",
                 "model_express.model.ModelService", "model_express.health.HealthService"):
        assert up.call("health", service=name) == {"code": "OK", "status": "SERVING"}, name
    assert up.call("health", service="no.such.Service")["code"] == "NOT_FOUND"

    from mxfs.rpc import model_express_api_pb2 as api_pb2
    from mxfs.rpc import model_express_api_pb2_grpc as api_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = api_grpc.ApiServiceStub(channel)
        pong = stub.SendRequest(api_pb2.ApiRequest(id="1", action="ping"), timeout=10)
        assert pong.success and pong.data == b'{"message": "pong"}'
        other = stub.SendRequest(api_pb2.ApiRequest(id="2", action="reboot"), timeout=10)
        assert not other.success and other.error == "Unknown action: reboot" and not other.HasField("data")


def test_malformed_requests_get_upstreams_answers(start_server, upstream):
    server = start_server()
    up = upstream(server.address)

    def raw(method: str, body: bytes) -> dict:
        return up.call("raw", method=f"/model_express.p2p.P2pService/{method}", body=base64.b64encode(body).decode())

    assert raw("NoSuchMethod", b"")["code"] == "UNIMPLEMENTED"
    assert up.call("raw", method="/model_express.p2p.WorkerService/GetTensorManifest", body="")["code"] == \
        "UNIMPLEMENTED"  # served by source workers, never by the server
    assert raw("PublishMetadata", b"\xff\xff\xff")["code"] == "INTERNAL"  # undecodable protobuf
    # decodable but invalid: answered in band with status OK, as ModelExpress does
    from mxfs.rpc import model_express_p2p_pb2 as pb

    cases = [
        ("PublishMetadata", pb.PublishMetadataRequest(worker_id="w"), pb.PublishMetadataResponse,
         "identity is required"),
        ("PublishMetadata", pb.PublishMetadataRequest(identity=pb.SourceIdentity(dtype="x"), worker_id="w"),
         pb.PublishMetadataResponse, "identity.model_name is required"),
        ("PublishMetadata", pb.PublishMetadataRequest(identity=pb.SourceIdentity(model_name="m")),
         pb.PublishMetadataResponse, "worker_id is required"),
        ("PublishMetadata", pb.PublishMetadataRequest(identity=pb.SourceIdentity(model_name="m"), worker_id="w"),
         pb.PublishMetadataResponse, "worker is required"),
        ("UpdateStatus", pb.UpdateStatusRequest(worker_id="w", status=2), pb.UpdateStatusResponse,
         "mx_source_id is required"),
        ("UpdateStatus", pb.UpdateStatusRequest(mx_source_id="s", status=2), pb.UpdateStatusResponse,
         "worker_id is required"),
        ("UpdateStatus", pb.UpdateStatusRequest(mx_source_id="s", worker_id="w", status=99), pb.UpdateStatusResponse,
         "invalid status value: 99"),
    ]
    for method, request, reply_type, message in cases:
        out = raw(method, request.SerializeToString())
        assert out["code"] == "OK", (method, message)
        reply = reply_type.FromString(base64.b64decode(out["reply"]))
        assert (reply.success, reply.message) == (False, message)
    got = pb.GetMetadataResponse.FromString(base64.b64decode(
        raw("GetMetadata", pb.GetMetadataRequest(worker_id="w").SerializeToString())["reply"]))
    assert not got.found and not got.HasField("worker")
    got = pb.GetMetadataResponse.FromString(base64.b64decode(
        raw("GetMetadata", pb.GetMetadataRequest(mx_source_id="s", worker_id="w").SerializeToString())["reply"]))
    assert (got.found, got.mx_source_id, got.worker_id) == (False, "s", "w")


def test_model_cache_client_downloads(start_server, upstream, models_dir, tmp_path):
    server = start_server()
    up = upstream(server.address)
    snapshot = Path(up.call("download", model=MODEL, cache_dir=str(tmp_path / "hf"), timeout_s=180)["snapshot"])
    origin = models_dir / MODEL
    want = {p.relative_to(origin).as_posix(): sha256_file(p) for p in origin.rglob("*") if p.is_file()}
    got = {p.relative_to(snapshot).as_posix(): sha256_file(p) for p in snapshot.rglob("*") if p.is_file()}
    assert got == want


def test_identity_ids_agree_with_the_client(start_server, upstream):
    """mxfs's mx_source_id equals ModelExpress's compute_mx_source_id, published vectors included."""
    from google.protobuf import json_format

    from mxfs.rpc import model_express_p2p_pb2 as pb
    from mxfs.weight_sources.source_id import mx_source_id

    base = pb.SourceIdentity(mx_version="0.5.0", model_name="deepseek-ai/DeepSeek-V3", backend_framework=1,
                             tensor_parallel_size=8, pipeline_parallel_size=1, dtype="bfloat16")
    assert mx_source_id(base) == "5a5f555570065064"
    pinned = pb.SourceIdentity()
    pinned.CopyFrom(base)
    pinned.revision = "abc123def4567890"
    assert mx_source_id(pinned) == "d0c184b2a9a34c82"
    server = start_server()
    up = upstream(server.address)
    for identity in (IDENTITY, dict(IDENTITY, model_name="Org/ÜnïCode", gpu_arch="SM90", torch_version="2.13",
                                    extra_parameters={"Foo": "A", "foo": "b", "training_step": "3"})):
        out = up.call("publish", identity=identity, worker=WORKER, worker_id="w")
        mine = mx_source_id(json_format.ParseDict(identity, pb.SourceIdentity()))
        assert out["mx_source_id"] == out["computed"] == mine
