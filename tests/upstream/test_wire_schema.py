"""mxfs's model_express.p2p schema against the descriptors ModelExpress's stubs were generated from."""

from __future__ import annotations

import base64

from google.protobuf import descriptor_pb2

from mxfs.rpc import model_express_p2p_pb2 as ours

MXFS_FIELDS_FROM = 1000  # mxfs additions, skipped by ModelExpress readers


def shape(proto: descriptor_pb2.FileDescriptorProto, names: set[str]) -> dict:
    """Everything that decides the wire format of the named messages, enums and services."""
    def fields(msg: descriptor_pb2.DescriptorProto) -> dict:
        out = {f.name: (f.number, f.type, f.label, f.type_name, f.HasField("oneof_index") and
                        msg.oneof_decl[f.oneof_index].name, f.proto3_optional)
               for f in msg.field if f.number < MXFS_FIELDS_FROM}
        out["<nested>"] = {n.name: fields(n) for n in msg.nested_type}
        return out

    return {
        "package": proto.package,
        "messages": {m.name: fields(m) for m in proto.message_type if m.name in names},
        "enums": {e.name: [(v.name, v.number) for v in e.value] for e in proto.enum_type},
        "services": {s.name: [(m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                              for m in s.method] for s in proto.service if s.name == "P2pService"},
    }


def test_p2p_schema_matches_modelexpress(start_server, upstream):
    up = upstream(start_server().address)
    theirs = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(up.call("descriptor")["file"]))
    mine = descriptor_pb2.FileDescriptorProto()
    ours.DESCRIPTOR.CopyToProto(mine)
    names = {m.name for m in mine.message_type}
    assert names >= {"SourceIdentity", "WorkerMetadata", "TensorDescriptor", "PublishMetadataRequest",
                     "ListSourcesRequest", "SourceInstanceRef", "GetMetadataResponse", "UpdateStatusRequest"}
    assert names <= {m.name for m in theirs.message_type}
    assert shape(mine, names) == shape(theirs, names)
    assert {f.number for m in mine.message_type if m.name == "TensorDescriptor" for f in m.field} >= {1001, 1002}
