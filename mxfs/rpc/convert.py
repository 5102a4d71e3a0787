"""The only place where protobuf messages and mxfs dataclasses meet."""

from __future__ import annotations

from mxfs.manifest import hashing
from mxfs.manifest.model import FileEntry, Manifest, TensorInfo
from mxfs.manifest.validate import validate_manifest
from mxfs.rpc import mxfs_pb2


def manifest_to_pb(m: Manifest) -> mxfs_pb2.Manifest:
    return mxfs_pb2.Manifest(
        name=m.name,
        revision=m.revision,
        block_size=m.block_size,
        origin=m.origin,
        total_size=m.total_size,
        block_hash=m.block_hash,
        files=[
            mxfs_pb2.FileEntry(
                path=f.path,
                size=f.size,
                sha256=f.sha256,
                block_hashes=list(f.block_hashes),
                tensors=[
                    mxfs_pb2.TensorInfo(
                        name=t.name, dtype=t.dtype, shape=list(t.shape), begin=t.begin, end=t.end
                    )
                    for t in f.tensors
                ],
                digest_pending=not f.digest_verified,
            )
            for f in m.files
        ],
    )


def manifest_from_pb(pb: mxfs_pb2.Manifest) -> Manifest:
    """The manifest a server sent, checked by :func:`validate_manifest` (ManifestError if unsafe)."""
    return validate_manifest(Manifest(
        name=pb.name,
        revision=pb.revision,
        block_size=pb.block_size,
        origin=pb.origin,
        block_hash=pb.block_hash or hashing.LEGACY,
        files=tuple(
            FileEntry(
                path=f.path,
                size=f.size,
                sha256=f.sha256,
                block_hashes=tuple(f.block_hashes),
                tensors=tuple(
                    TensorInfo(t.name, t.dtype, tuple(t.shape), t.begin, t.end) for t in f.tensors
                ),
                digest_verified=not f.digest_pending,
            )
            for f in pb.files
        ),
    ))
