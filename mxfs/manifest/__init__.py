"""Model manifests: files, fixed-size blocks with hashes, safetensors tensor index."""

from mxfs.manifest.model import BlockKey, FileEntry, Manifest, TensorInfo
from mxfs.manifest.names import ModelRef, parse_model_ref, validate_relpath

__all__ = [
    "BlockKey",
    "FileEntry",
    "Manifest",
    "ModelRef",
    "TensorInfo",
    "parse_model_ref",
    "validate_relpath",
]
