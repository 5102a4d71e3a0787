"""The only place that turns P2P protobuf messages into plain dataclasses and back."""

from __future__ import annotations

from mxfs.rpc import p2p_pb2
from mxfs.weight_sources.model import SourceIdentity, SourceInfo, SourceMetadata, Status, TensorDesc


def identity_to_pb(i: SourceIdentity) -> p2p_pb2.SourceIdentity:
    return p2p_pb2.SourceIdentity(
        model=i.model, revision=i.revision, dtype=i.dtype, quantization=i.quantization, tp_size=i.tp_size,
        pp_size=i.pp_size, ep_size=i.ep_size, backend=i.backend, backend_version=i.backend_version,
        rank=i.rank, device=i.device,
    )


def identity_from_pb(pb: p2p_pb2.SourceIdentity) -> SourceIdentity:
    return SourceIdentity(
        model=pb.model, revision=pb.revision, dtype=pb.dtype, quantization=pb.quantization or "none",
        tp_size=pb.tp_size, pp_size=pb.pp_size, ep_size=pb.ep_size, backend=pb.backend,
        backend_version=pb.backend_version, rank=pb.rank, device=pb.device,
    )


def info_to_pb(i: SourceInfo) -> p2p_pb2.SourceInfo:
    return p2p_pb2.SourceInfo(
        source_id=i.source_id, identity=identity_to_pb(i.identity), status=int(i.status),
        agent_name=i.agent_name, host=i.host, tensor_count=i.tensor_count, total_bytes=i.total_bytes,
        updated_unix=i.updated_unix,
    )


def info_from_pb(pb: p2p_pb2.SourceInfo) -> SourceInfo:
    return SourceInfo(
        source_id=pb.source_id, identity=identity_from_pb(pb.identity), status=Status(pb.status),
        agent_name=pb.agent_name, host=pb.host, tensor_count=pb.tensor_count, total_bytes=pb.total_bytes,
        updated_unix=pb.updated_unix,
    )


def tensor_to_pb(t: TensorDesc) -> p2p_pb2.TensorDescriptor:
    return p2p_pb2.TensorDescriptor(name=t.name, dtype=t.dtype, shape=list(t.shape), size=t.size, addr=t.addr,
                                    device_id=t.device_id, checksum=t.checksum)


def tensor_from_pb(pb: p2p_pb2.TensorDescriptor) -> TensorDesc:
    return TensorDesc(pb.name, pb.dtype, tuple(pb.shape), pb.size, pb.addr, pb.device_id, pb.checksum)


def manifest_to_pb(tensors: list[TensorDesc], mem_type: str) -> p2p_pb2.TensorManifest:
    return p2p_pb2.TensorManifest(tensors=[tensor_to_pb(t) for t in tensors], mem_type=mem_type)


def metadata_from_pb(pb: p2p_pb2.SourceMetadata) -> SourceMetadata:
    return SourceMetadata(info_from_pb(pb.info), pb.agent_metadata, pb.manifest.mem_type,
                          [tensor_from_pb(t) for t in pb.manifest.tensors])
