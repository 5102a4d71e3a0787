"""The only place that turns ``model_express.p2p`` messages into plain dataclasses and back."""

from __future__ import annotations

from mxfs import __version__
from mxfs.rpc import model_express_p2p_pb2 as pb
from mxfs.weight_sources.model import SourceIdentity, SourceInfo, SourceMetadata, Status, TensorDesc
from mxfs.weight_sources.source_id import mx_source_id

#: ``mx_version`` of sources mxfs publishes (ModelExpress puts its package version there)
MX_VERSION = f"mxfs-{__version__}"
_FRAMEWORKS = {"vllm": pb.BACKEND_FRAMEWORK_VLLM, "sglang": pb.BACKEND_FRAMEWORK_SGLANG,
               "trtllm": pb.BACKEND_FRAMEWORK_TRT_LLM}
_FRAMEWORK_NAMES = {v: k for k, v in _FRAMEWORKS.items()}


def identity_to_pb(i: SourceIdentity) -> pb.SourceIdentity:
    """The wire identity of an mxfs source (rank and device travel with the worker)."""
    return pb.SourceIdentity(
        mx_version=MX_VERSION, mx_source_type=pb.MX_SOURCE_TYPE_WEIGHTS, model_name=i.model,
        backend_framework=_FRAMEWORKS.get(i.backend, pb.BACKEND_FRAMEWORK_UNKNOWN),
        tensor_parallel_size=i.tp_size, pipeline_parallel_size=i.pp_size, expert_parallel_size=i.ep_size,
        dtype=i.dtype, quantization="" if i.quantization == "none" else i.quantization, revision=i.revision,
        backend_framework_version=i.backend_version,
    )


def identity_from_pb(p: pb.SourceIdentity, rank: int, accelerator: str) -> SourceIdentity:
    return SourceIdentity(
        model=p.model_name, revision=p.revision, dtype=p.dtype.removeprefix("torch."),
        quantization=p.quantization or "none", tp_size=p.tensor_parallel_size, pp_size=p.pipeline_parallel_size,
        ep_size=p.expert_parallel_size, backend=_FRAMEWORK_NAMES.get(p.backend_framework, "unknown"),
        backend_version=p.backend_framework_version, rank=rank, device=accelerator,
    )


def source_id_of(i: SourceIdentity) -> str:
    """The ``mx_source_id`` mxfs workers of this identity publish under."""
    return mx_source_id(identity_to_pb(i))


def tensor_to_pb(t: TensorDesc) -> pb.TensorDescriptor:
    return pb.TensorDescriptor(name=t.name, addr=t.addr, size=t.size, device_id=t.device_id,
                               dtype="torch." + t.dtype, mxfs_shape=list(t.shape), mxfs_checksum=t.checksum)


def tensor_from_pb(p: pb.TensorDescriptor) -> TensorDesc:
    return TensorDesc(p.name, p.dtype.removeprefix("torch."), tuple(p.mxfs_shape), p.size, p.addr, p.device_id,
                      p.mxfs_checksum)


def mem_type_of(accelerator: str) -> str:
    return "DRAM" if accelerator in ("", "cpu") else "VRAM"


def worker_to_pb(identity: SourceIdentity, agent_name: str, agent_metadata: bytes, tensors: list[TensorDesc],
                 status: Status, host: str = "") -> pb.WorkerMetadata:
    """Full-metadata mode: the NIXL agent metadata and every tensor stored on the server."""
    return pb.WorkerMetadata(
        worker_rank=identity.rank, nixl_metadata=agent_metadata, status=int(status), agent_name=agent_name,
        accelerator=identity.device, topology={"host": host} if host else {},
        tensor_source=pb.TensorSourceMetadata(tensors=[tensor_to_pb(t) for t in tensors]),
    )


def worker_tensors(w: pb.WorkerMetadata) -> list[pb.TensorDescriptor]:
    """The tensors of a worker, from ``tensor_source`` or the older ``tensors`` field."""
    return list(w.tensor_source.tensors) if w.HasField("tensor_source") else list(w.tensors)


def status_of(value: int) -> Status:
    return Status(value) if value in Status._value2member_map_ else Status.UNKNOWN


def info_from_ref(ref: pb.SourceInstanceRef, identity: SourceIdentity, status: Status) -> SourceInfo:
    return SourceInfo(source_id=ref.worker_id, identity=identity, status=status, agent_name="",
                      host=ref.topology.get("host", ""), updated_unix=ref.updated_at / 1000,
                      mx_source_id=ref.mx_source_id)


def metadata_from_pb(reply: pb.GetMetadataResponse) -> SourceMetadata:
    w = reply.worker
    tensors = [tensor_from_pb(t) for t in worker_tensors(w)]
    info = SourceInfo(
        source_id=reply.worker_id, identity=identity_from_pb(reply.identity, w.worker_rank, w.accelerator),
        status=status_of(w.status), agent_name=w.agent_name, host=w.topology.get("host", ""),
        tensor_count=len(tensors), total_bytes=sum(t.size for t in tensors), updated_unix=w.updated_at / 1000,
        mx_source_id=reply.mx_source_id,
    )
    return SourceMetadata(info, w.nixl_metadata, mem_type_of(w.accelerator), tensors)
