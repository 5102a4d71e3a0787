"""Wire protocol: generated stubs (built from ``proto/``), conversions and clients.

The generated ``*_pb2`` modules are produced by the build. A source checkout that was
never built regenerates them on first import when ``proto/`` sits beside the package.
"""

from __future__ import annotations

from pathlib import Path


def _ensure_generated() -> None:
    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    proto_root = repo / "proto"
    if not proto_root.is_dir():
        return
    from mxfs.rpc import codegen

    if codegen.is_stale(proto_root, repo):
        codegen.generate(proto_root, repo)


_ensure_generated()
