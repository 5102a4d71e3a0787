"""``mx_source_id``: the content address of a ``model_express.p2p.SourceIdentity``.

The first 16 hex digits of sha256 over a canonical JSON of the identity: string fields
lower-cased, enums as their numbers, ``extra_parameters`` sorted by original key and
lower-cased (on keys that collide once lower-cased the first in sort order wins), the
optional compatibility fields present only when set, keys sorted, no spaces. Clients
check the id the server returns against their own computation, so this must agree with
ModelExpress's byte for byte (pinned by tests against its published vectors and its client).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: hashed only when non-empty, so identities from before these fields keep their ids
OPTIONAL_FIELDS = ("backend_framework_version", "torch_version", "cuda_version", "triton_version", "gpu_arch",
                   "compile_config_digest")


def canonical_identity(identity: Any) -> str:
    """The canonical JSON of a SourceIdentity message (any object with its fields)."""
    extra: dict[str, str] = {}
    for key, value in sorted(identity.extra_parameters.items()):
        extra.setdefault(key.lower(), value.lower())
    doc: dict[str, Any] = {
        "mx_version": identity.mx_version.lower(),
        "mx_source_type": int(identity.mx_source_type),
        "model_name": identity.model_name.lower(),
        "backend_framework": int(identity.backend_framework),
        "tensor_parallel_size": int(identity.tensor_parallel_size),
        "pipeline_parallel_size": int(identity.pipeline_parallel_size),
        "expert_parallel_size": int(identity.expert_parallel_size),
        "dtype": identity.dtype.lower(),
        "quantization": identity.quantization.lower(),
        "extra_parameters": extra,
        "revision": identity.revision.lower(),
    }
    for name in OPTIONAL_FIELDS:
        value = getattr(identity, name)
        if value:
            doc[name] = value.lower()
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def mx_source_id(identity: Any) -> str:
    """16 hex digits identifying every worker that publishes this identity."""
    return hashlib.sha256(canonical_identity(identity).encode()).hexdigest()[:16]
