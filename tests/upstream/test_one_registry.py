"""One registry: ModelExpress workers and mxfs's ``mx`` loader find each other's sources (metadata level)."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from mxfs.weight_sources.client import SourceClient
from mxfs.weight_sources.errors import SourceRejected
from mxfs.weight_sources.model import SourceIdentity, Status, TensorDesc
from tests.conftest import MODEL
from tests.upstream.test_upstream_p2p import IDENTITY, READY, REVISION, WORKER

# what mxfs's loader computes for the same vLLM deployment (it also knows vLLM's version)
MX_IDENT = SourceIdentity(MODEL, REVISION, "bfloat16", backend="vllm", backend_version="0.32.0", device="cpu")


def test_upstream_source_is_found_by_the_mx_loader_client(start_server, upstream):
    server = start_server()
    up = upstream(server.address)
    sid = up.call("publish", identity=IDENTITY, worker=WORKER, worker_id="up-w0")["mx_source_id"]
    client = SourceClient(server.address)
    try:
        assert client.list(MX_IDENT) == []  # published, not READY yet
        assert up.call("update", mx_source_id=sid, worker_id="up-w0", status=READY)["success"]
        # ModelExpress put extra_parameters in this identity: not ours, so a separate id...
        assert client.list(MX_IDENT) == []
        plain = {k: v for k, v in IDENTITY.items() if k != "extra_parameters"}
        sid = up.call("publish", identity=plain, worker=WORKER, worker_id="up-w1")["mx_source_id"]
        assert up.call("update", mx_source_id=sid, worker_id="up-w1", status=READY)["success"]
        # ...while the plain vLLM identity (ModelExpress's mx_version, no vLLM version) is accepted
        found = client.list(MX_IDENT)
        assert [(s.source_id, s.mx_source_id, s.status) for s in found] == [("up-w1", sid, Status.READY)]
        meta = client.metadata(found[0])
        assert meta.agent_metadata == base64.b64decode(WORKER["nixl_metadata"])
        assert meta.info.agent_name == "mx-agent-0" and meta.mem_type == "DRAM"
        assert [(t.name, t.dtype, t.size, t.checksum) for t in meta.tensors] == [
            (t["name"], "bfloat16", int(t["size"]), b"") for t in WORKER["tensor_source"]["tensors"]]
        assert MX_IDENT.accepts(meta.info.identity)
        for other in (dataclasses.replace(MX_IDENT, dtype="float16"), dataclasses.replace(MX_IDENT, rank=1),
                      dataclasses.replace(MX_IDENT, device="cuda"), dataclasses.replace(MX_IDENT, revision="d" * 40)):
            assert client.list(other) == [], other
    finally:
        client.close()


def test_mx_source_is_listed_to_the_upstream_client(start_server, upstream):
    server = start_server()
    up = upstream(server.address)
    client = SourceClient(server.address)
    tensors = [TensorDesc("w", "bfloat16", (4, 8), 64, 0x7000, 0, b"\x01" * 16),
               TensorDesc("b", "float32", (8,), 32, 0x8000, 0, b"\x02" * 16)]
    try:
        with pytest.raises(SourceRejected, match="does not hold VRAM"):  # the wire derives it from the device
            client.publish(MX_IDENT, "mxfs-worker", "mx-mxfs-worker", b"nixl-md", tensors, "VRAM")
        client.publish(MX_IDENT, "mxfs-worker", "mx-mxfs-worker", b"nixl-md", tensors, "DRAM")
        refs = up.call("list", status_filter=READY)["instances"]
        assert [(r["worker_id"], r["model_name"], r["accelerator"]) for r in refs] == [
            ("mxfs-worker", MODEL, "cpu")]
        got = up.call("get", mx_source_id=refs[0]["mx_source_id"], worker_id="mxfs-worker")
        assert got["found"] and got["status"] == 2 and got["agent_name"] == "mx-mxfs-worker"
        assert got["identity_source_id"] == refs[0]["mx_source_id"]  # ModelExpress's own id check holds
        assert base64.b64decode(got["nixl_metadata"]) == b"nixl-md"
        assert [(t["name"], t["dtype"], int(t["size"])) for t in got["tensors"]] == [
            ("w", "torch.bfloat16", 64), ("b", "torch.float32", 32)]
        # mxfs's shapes and checksums ride in fields ModelExpress skips, and come back intact
        assert client.metadata(client.list(MX_IDENT)[0]).tensors == tensors
        assert client.unpublish("mxfs-worker")  # drain: STALE, ModelExpress's shutdown signal
        assert up.call("list", status_filter=READY).get("instances", []) == []
        assert up.call("get", mx_source_id=refs[0]["mx_source_id"], worker_id="mxfs-worker")["status"] == 3
    finally:
        client.close()
