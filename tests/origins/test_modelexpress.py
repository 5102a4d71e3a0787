"""ModelExpress wire compatibility: a client generated from our protos, in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from mxfs.rpc import model_express_model_pb2 as pb
from mxfs.rpc import model_express_model_pb2_grpc as pb_grpc
from tests.conftest import MODEL

LAZY_ABOVE = 64 * 1024  # shards are served lazily (block by block from the origin)
PROTO = Path(__file__).resolve().parents[2] / "proto" / "mxfs" / "rpc" / "model_express_model.proto"

CLIENT = textwrap.dedent("""
    import hashlib, json, sys
    import grpc
    import mxmodel_pb2 as pb, mxmodel_pb2_grpc as rpc
    address, name, provider = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stub = rpc.ModelServiceStub(grpc.insecure_channel(address))
    statuses = [(pb.ModelStatus.Name(u.status), u.resolved_revision)
                for u in stub.EnsureModelDownloaded(pb.ModelDownloadRequest(model_name=name, provider=provider))]
    files, commits, last = {}, set(), None
    for c in stub.StreamModelFiles(pb.ModelFilesRequest(model_name=name, provider=provider, chunk_size=100000)):
        buf = files.setdefault(c.relative_path, bytearray())
        assert c.offset == len(buf), (c.relative_path, c.offset, len(buf))
        assert len(c.data) <= 100000
        buf += c.data
        if c.HasField("commit_hash"):
            commits.add(c.commit_hash)
        last = c
    listing = stub.ListModelFiles(pb.ModelFilesRequest(model_name=name, provider=provider, ignore_weights=True))
    print(json.dumps({"statuses": statuses, "commits": sorted(commits), "last_file": last.is_last_file,
                      "files": {p: hashlib.sha256(b).hexdigest() for p, b in files.items()},
                      "light": sorted(f.relative_path for f in listing.files)}))
""")


@pytest.fixture(scope="module")
def generated_client(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mxclient")
    (out / "mxmodel.proto").write_text(PROTO.read_text())
    # protoc in its own process: its bundled protobuf must never share a process with NIXL's
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                    f"--grpc_python_out={out}", str(out / "mxmodel.proto")], check=True, timeout=120)
    (out / "client.py").write_text(CLIENT)
    return out


def _run_client(client_dir: Path, address: str, name: str, provider: int) -> dict:
    r = subprocess.run([sys.executable, str(client_dir / "client.py"), address, name, str(provider)],
                       cwd=client_dir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("origin", ["local", "hf", "s3"])
def test_generated_client_streams_exact_bytes(origin, request, generated_client, inproc_server, models_dir,
                                              origin_hashes, tmp_path):
    name, provider, cfg = MODEL, pb.HUGGING_FACE, {"models_dir": str(models_dir)}
    if origin == "hf":
        hub = request.getfixturevalue("hub")
        name, cfg = "hf-org/tiny", {"origins": ["hf"], "origin_eager_bytes": LAZY_ABOVE}
        hub.add_dir(name, models_dir / MODEL)
    elif origin == "s3":
        request.getfixturevalue("s3_env")
        provider, cfg = pb.S3, {"origins": [request.getfixturevalue("s3_model")], "origin_eager_bytes": LAZY_ABOVE}
    server = inproc_server(**cfg)
    out = _run_client(generated_client, server.address, name, provider)
    assert out["statuses"][0][0] == "DOWNLOADING" and out["statuses"][-1][0] == "DOWNLOADED"
    revision = out["statuses"][-1][1]
    assert len(revision) == 40 and out["commits"] == [revision]
    assert out["files"] == origin_hashes
    assert out["last_file"] is True
    assert out["light"] == sorted(p for p in origin_hashes if not p.endswith(".safetensors"))
    if origin != "local":  # shards were served lazily: Ensure moved each byte once (+ headers at resolve)
        total = sum((models_dir / MODEL / p).stat().st_size for p in origin_hashes)
        assert total < server.metrics.origin_bytes._value.get() < total + 100_000


def test_uri_names_errors_and_delete(s3_env, s3_model, inproc_server, models_dir):
    server = inproc_server(origins=[s3_model], origin_eager_bytes=LAZY_ABOVE)
    stub = pb_grpc.ModelServiceStub(grpc.insecure_channel(server.address))
    ups = list(stub.EnsureModelDownloaded(pb.ModelDownloadRequest(model_name=f"{s3_model}/{MODEL}", provider=pb.S3)))
    assert ups[-1].status == pb.DOWNLOADED
    missing = list(stub.EnsureModelDownloaded(pb.ModelDownloadRequest(model_name="no-org/nothing", provider=pb.S3)))
    assert missing[-1].status == pb.ERROR and "not found" in missing[-1].message
    elsewhere = list(stub.EnsureModelDownloaded(pb.ModelDownloadRequest(model_name="s3://other/x/a/b")))
    assert elsewhere[-1].status == pb.ERROR and "not under any origin" in elsewhere[-1].message
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamModelFiles(pb.ModelFilesRequest(model_name=MODEL, provider=pb.S3,
                                                        file_selector=pb.ModelFileSelector(paths=["nope.bin"]))))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    cached = Path(server.config.cache_dir) / "models" / MODEL
    assert any(cached.iterdir())
    assert stub.DeleteModel(pb.DeleteModelRequest(model_name=MODEL, provider=pb.S3)).success
    assert not any(p for p in cached.iterdir())
    blobs = Path(server.config.cache_dir) / "origin-blocks" / "blocks" / "blobs"
    assert sum(p.stat().st_blocks * 512 for p in blobs.rglob("*") if p.is_file()) < 64 * 1024  # holes punched
    assert not stub.DeleteModel(pb.DeleteModelRequest(model_name=MODEL, provider=pb.S3)).success
    # evicted/deleted models come back on demand, byte-identical
    chunks = list(stub.StreamModelFiles(pb.ModelFilesRequest(
        model_name=MODEL, provider=pb.S3, file_selector=pb.ModelFileSelector(paths=["config.json"]))))
    assert b"".join(c.data for c in chunks) == (models_dir / MODEL / "config.json").read_bytes()
