"""Build hook: generate the gRPC stubs from proto/ before packaging (never hand-edited)."""

import runpy
from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildPyWithProtos(build_py):
    """Run protoc (grpcio-tools) into mxfs/rpc, then the normal build_py."""

    def run(self) -> None:
        codegen = runpy.run_path(str(ROOT / "mxfs" / "rpc" / "codegen.py"))
        codegen["generate"](ROOT / "proto", ROOT)
        super().run()


def _packages() -> list[str]:
    pkgs = [p for p in find_namespace_packages(include=["mxfs", "mxfs.*"]) if "__pycache__" not in p]
    for import_name, folder in (("mxfs_daemon", "daemon"), ("mxfs_csi", "csi")):
        pkgs.append(import_name)
        pkgs += [f"{import_name}.{p}" for p in find_namespace_packages(where=folder)
                 if "__pycache__" not in p]
    return pkgs


setup(
    packages=_packages(),
    package_dir={"mxfs_daemon": "daemon", "mxfs_csi": "csi"},
    cmdclass={"build_py": BuildPyWithProtos},
)
