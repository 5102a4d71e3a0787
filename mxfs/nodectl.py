"""Client side of a node daemon's control socket (found through the mount's xattrs)."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from pathlib import Path

import grpc

from mxfs.errors import InvalidModelName, ModelNotFound, MxfsError
from mxfs.rpc import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)
XATTR = "user.mxfs."
LOG_EVERY_S = 2.0


def _xattr(path: Path, name: str) -> str | None:
    """An mxfs xattr of ``path``; None where the file has none (not served by mxfs). What the
    mount itself answers (no such model, server unreachable, daemon gone) is an MxfsError."""
    try:
        return os.getxattr(path, XATTR + name).decode()
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        if exc.errno == errno.ENOENT:
            raise MxfsError(f"{path}: no such file or model") from None
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            raise MxfsError(f"{path}: the mount's daemon is gone (stale mount: `mxfs umount` it, "
                            "or restart the daemon)") from None
        if exc.errno == errno.EIO:
            raise MxfsError(f"{path}: I/O error from the mount (server unreachable? see the daemon's log)") from None
        raise MxfsError(f"{path}: {exc.strerror}") from None


def control_socket(path: Path) -> str:
    """The daemon's control socket, from the ``user.mxfs.control`` xattr of the mount root."""
    path = Path(os.path.abspath(path))  # a relative path has no parents to walk up
    for candidate in (path, *path.parents):
        value = _xattr(candidate, "control")
        if value:
            return value
    raise MxfsError(f"{path} is not inside a mxfs mount")


def _stub(path: Path) -> node_pb2_grpc.NodeControlStub:
    return node_pb2_grpc.NodeControlStub(grpc.insecure_channel(f"unix://{control_socket(path)}"))


def _failed(what: str, path: Path, exc: grpc.RpcError) -> MxfsError:
    """A control call's gRPC error as the MxfsError a user can act on."""
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(exc.details())
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidModelName(exc.details())
    if code == grpc.StatusCode.UNAVAILABLE:
        socket = control_socket(path)
        if os.path.exists(socket) and not os.access(socket, os.R_OK | os.W_OK):
            return MxfsError(f"{what}: permission denied on the daemon's control socket {socket} (run as root)")
        return MxfsError(f"{what}: the daemon does not answer on {socket} ({exc.details()})")
    return MxfsError(f"{what}: {code.name}: {exc.details()}")


def hydrate_model(path: Path, timeout_s: float | None = None) -> node_pb2.PrefetchProgress:
    """Hydrate the model at ``path`` and wait; the last progress message (``complete`` says
    whether every file ended complete in the node cache). Raises MxfsError when the daemon
    cannot be asked or the wait runs out."""
    name, revision = _xattr(path, "model"), _xattr(path, "revision")
    if not name or not revision:
        raise MxfsError(f"{path} is not a model directory of a mxfs mount")
    last = node_pb2.PrefetchProgress()
    try:
        for message in _stub(path).Prefetch(node_pb2.PrefetchRequest(name=name, revision=revision),
                                            timeout=timeout_s):
            last = message
    except grpc.RpcError as exc:
        raise _failed(f"prefetch of {name}", path, exc) from exc
    return last


def prefetch(path: Path, page_cache: bool = False, progress: bool = True, wait: bool = False) -> int:
    """Hydrate the model at ``path`` through its daemon; shows a bar on a terminal, else one
    structured log line (bytes, rate, ETA) every few seconds. With ``wait`` the exit code is
    0 only when every file ended complete and verified in the node cache."""
    name, revision = _xattr(path, "model"), _xattr(path, "revision")
    if not name or not revision:
        raise MxfsError(f"{path} is not a model directory of a mxfs mount")
    request = node_pb2.PrefetchRequest(name=name, revision=revision, page_cache=page_cache)
    bar = None
    last = node_pb2.PrefetchProgress()
    start = time.monotonic()
    logged = 0.0
    try:
        for last in _stub(path).Prefetch(request):
            if progress and sys.stderr.isatty():
                if bar is None:
                    from tqdm import tqdm

                    bar = tqdm(total=last.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                               desc=f"prefetch {name}")
                bar.update(last.done_bytes - bar.n)
            elif progress and (last.finished or time.monotonic() - logged >= LOG_EVERY_S):
                logged = time.monotonic()
                rate = last.done_bytes / max(1e-6, logged - start)
                eta = (last.total_bytes - last.done_bytes) / rate if rate > 0 else float("inf")
                log.info("prefetch %s: %d/%d bytes, %.1f MB/s, eta %.0fs", name, last.done_bytes,
                         last.total_bytes, rate / 1e6, eta,
                         extra={"fields": {
                             "model": name, "done_bytes": last.done_bytes, "total_bytes": last.total_bytes,
                             "rate_bytes_s": round(rate), "eta_s": None if eta == float("inf") else round(eta, 1)}})
    except grpc.RpcError as exc:
        raise _failed(f"prefetch of {name}", path, exc) from exc
    finally:
        if bar is not None:
            bar.close()
    if last.error:
        print(f"prefetch of {name} failed: {last.error}", file=sys.stderr)
        return 1
    print(f"{name}@{last.revision}: {last.done_blocks}/{last.total_blocks} blocks, "
          f"{last.done_bytes} bytes cached{', complete' if last.complete else ''}")
    if wait and not last.complete:
        print(f"prefetch of {name}: not every file is complete in the node cache", file=sys.stderr)
        return 1
    return 0


def status(mountpoint: Path) -> node_pb2.NodeStatus:
    try:
        return _stub(mountpoint).Status(node_pb2.NodeStatusRequest(), timeout=10)
    except grpc.RpcError as exc:
        raise _failed(f"status of {mountpoint}", mountpoint, exc) from exc


def print_status(mountpoint: Path) -> int:
    s = status(mountpoint)
    print(f"mount {s.mountpoint}  server {s.server}")
    print(f"cache {s.cache_bytes}/{s.cache_limit} bytes")
    for m in s.models:
        pct = 100.0 * m.cached_bytes / m.total_bytes if m.total_bytes else 100.0
        print(f"  {m.name}@{m.revision}  {m.cached_bytes}/{m.total_bytes} bytes cached ({pct:.1f}%), "
              f"{m.complete_files}/{m.files} files complete")
    for tier, n in sorted(s.bytes_by_tier.items()):
        print(f"  from {tier}: {n} bytes")
    for peer in s.peers:
        print(f"  peer {peer}")
    return 0


class NotAnMxfsMount(MxfsError):
    """The path has no ``user.mxfs.control`` xattr: it is not served by a node daemon."""


def resolve(mountpoint: Path, name: str, revision: str, timeout_s: float = 60.0) -> str:
    """Have the daemon serving ``mountpoint`` resolve ``name@revision`` (a branch or tag too),
    so its snapshot shows in the mount; returns the commit."""
    socket = _xattr(mountpoint, "control")
    if not socket:
        raise NotAnMxfsMount(f"{mountpoint} is not the root of a mxfs mount")
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        try:
            reply = node_pb2_grpc.NodeControlStub(channel).Resolve(
                node_pb2.ResolveRequest(name=name, revision=revision), timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise NotAnMxfsMount(f"the daemon of {mountpoint} cannot resolve on request") from exc
            raise _failed(f"resolving {name}@{revision}", mountpoint, exc) from exc
    return reply.revision
