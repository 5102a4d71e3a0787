"""Helpers for the CSI tests: generated models, mount tricks, request builders.

Every test runs as root against the real kernel: bind mounts, read-only remounts and
(where /dev/fuse exists) dead FUSE mounts. Whatever a test leaves mounted under its
tmp_path is unmounted at teardown.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxfs.rpc import csi_pb2, csi_pb2_grpc
from mxfs_csi import mounts
from tests.support.needs import need_fuse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DRIVER = "csi.test.mxfs.io"
NODE_ID = "node-a"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


@dataclass
class NodeMountFixture:
    """What the CSI plugin publishes from: a live mount holding generated models."""

    mountpoint: Path
    models_dir: Path  # origin: files at models_dir/<org>/<name>/...
    model: str  # "org/name" present in models_dir


@dataclass
class Csi:
    """A running CSI server and stubs talking to it over its unix socket."""

    socket: Path
    identity: csi_pb2_grpc.IdentityStub
    node: csi_pb2_grpc.NodeStub
    mount: NodeMountFixture
    daemon: Any = None  # the node daemon process, when the mount is a real mxfs mount
    server: Any = None  # its server process, likewise


def write_model(root: Path, seed: int) -> None:
    """A small model: config, a 3 MiB weights file, a file in a subfolder."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    (root / "model.safetensors").write_bytes(rng.randbytes(3 * 1024 * 1024 + 17))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_bytes(rng.randbytes(4096))


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(f"{root}/")


def unmount_everything_under(root: Path, keep: Path | None = None) -> None:
    """Detach every mount at or below ``root`` (but not ``keep`` and below), newest first."""
    for entry in reversed(mounts.read_mountinfo()):
        if _under(entry.mount_point, root) and not (keep and _under(entry.mount_point, keep)):
            _libc.umount2(entry.mount_point.encode(), mounts.MNT_DETACH)


def mount_dead_fuse(path: Path) -> None:
    """Leave at ``path`` what a crashed node daemon leaves: a mxfs mount answering ENOTCONN.

    Mounts a FUSE filesystem of the daemon's type (``fuse.mxfs``) on a fresh /dev/fuse
    descriptor and closes it at once, which aborts the connection exactly as a daemon's
    death does.
    """
    need_fuse()
    fd = os.open("/dev/fuse", os.O_RDWR)
    try:
        opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
        flags = mounts.MS_NOSUID | mounts.MS_NODEV
        if _libc.mount(b"mxfs", str(path).encode(), b"fuse.mxfs", flags, opts) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def bind(source: Path, target: Path) -> None:
    """A plain (writable) bind mount, as a stand-in or as a foreign mount on a target."""
    if _libc.mount(str(source).encode(), str(target).encode(), None, mounts.MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def mount_capability(
    mode: int = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
) -> csi_pb2.VolumeCapability:
    """A filesystem volume capability with the given access mode."""
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
    )


def publish_request(target: Path, model: str, **overrides: object) -> csi_pb2.NodePublishVolumeRequest:
    """A valid NodePublishVolumeRequest for ``model`` at ``target``; fields overridable."""
    fields: dict[str, object] = {
        "volume_id": f"vol-{model.replace('/', '-')}",
        "target_path": str(target),
        "volume_capability": mount_capability(),
        "readonly": True,
        "volume_context": {"model": model, "csi.storage.k8s.io/ephemeral": "true"},
    }
    fields.update(overrides)
    return csi_pb2.NodePublishVolumeRequest(**fields)
