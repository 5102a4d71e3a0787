"""The CSI gRPC server on its unix socket."""

from __future__ import annotations

import logging
import os
import signal
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from mxfs.rpc import csi_pb2_grpc
from mxfs.stopsignal import wait_for_stop_signal
from mxfs_csi import DEFAULT_KUBELET_DIR
from mxfs_csi.identity import IdentityService
from mxfs_csi.node import NodeService
from mxfs_csi.nodemount import NodeMount
from mxfs_csi.publisher import Publisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CsiConfig:
    """Everything the plugin needs to serve."""

    endpoint: str  # unix:///csi/csi.sock (or a bare absolute path)
    node_id: str
    mountpoint: Path
    driver_name: str
    workers: int = 8
    kubelet_dir: Path = DEFAULT_KUBELET_DIR  # every target path must be inside it


def socket_path(endpoint: str) -> Path:
    """The filesystem path of a ``unix://`` endpoint (CSI allows unix sockets only)."""
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            endpoint = endpoint[len(prefix) :]
            break
    else:
        if "://" in endpoint:
            raise ValueError(f"CSI endpoint {endpoint!r}: only unix sockets are allowed")
    path = Path(endpoint)
    if not path.is_absolute():
        raise ValueError(f"CSI endpoint {endpoint!r}: the socket path must be absolute")
    return path


def build_server(config: CsiConfig) -> grpc.Server:
    """A started gRPC server answering Identity and Node on the config's socket."""
    path = socket_path(config.endpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the CSI socket's directory {path.parent}: {exc.strerror}") from None
    if path.is_socket():
        path.unlink()  # left by a previous run; kubelet reconnects by path
    node_mount = NodeMount(config.mountpoint)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="csi"))
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(config.driver_name, node_mount), server)
    node = NodeService(config.node_id, node_mount, Publisher(), config.kubelet_dir)
    csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    try:
        server.add_insecure_port(f"unix://{path}")
    except RuntimeError as exc:  # grpc reports a failed bind this way
        raise OSError(f"cannot listen on the CSI socket {path}: {exc}") from None
    server.start()
    os.chmod(path, 0o660)
    log.info(
        "CSI driver %s serving node %s on %s (models from %s, targets under %s)",
        config.driver_name,
        config.node_id,
        path,
        config.mountpoint,
        config.kubelet_dir,
    )
    return server


def serve(config: CsiConfig, grace: float = 5.0) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    server = build_server(config)
    signum = wait_for_stop_signal()
    log.info("%s: stopping CSI server", signal.Signals(signum).name)
    server.stop(grace).wait()
    socket_path(config.endpoint).unlink(missing_ok=True)
    return 0
