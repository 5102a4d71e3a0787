"""Generate Python gRPC stubs from ``proto/`` with grpcio-tools.

Used by the build (``setup.py``) and, for a source checkout that was never built,
on first import of :mod:`mxfs.rpc`. Stdlib + grpc_tools only: it runs before the
package's own dependencies are importable.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def proto_files(proto_root: Path) -> list[Path]:
    """Every ``.proto`` under ``proto_root``, sorted for a stable build."""
    return sorted(proto_root.rglob("*.proto"))


def is_stale(proto_root: Path, out_root: Path) -> bool:
    """True when a stub is missing or older than its proto."""
    for proto in proto_files(proto_root):
        rel = proto.relative_to(proto_root).with_suffix("")
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            stub = out_root / (str(rel) + suffix)
            if not stub.exists() or stub.stat().st_mtime < proto.stat().st_mtime:
                return True
    return False


def generate(proto_root: Path, out_root: Path) -> None:
    """Compile every proto under ``proto_root`` into ``out_root`` (mirrors the paths).

    protoc runs in a child process: its bundled protobuf library must not be loaded into a
    process that later loads other native protobuf copies (NIXL aborts beside it).
    """
    import importlib.util

    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("grpcio-tools is required to build the gRPC stubs")
    include = str(Path(next(iter(spec.submodule_search_locations))) / "_proto")
    protos = [str(p.relative_to(proto_root)) for p in proto_files(proto_root)]
    args = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    result = subprocess.run(args, cwd=proto_root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}): {result.stderr.strip()}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[2]
    generate(here / "proto", here)
    sys.exit(0)
