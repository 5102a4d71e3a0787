"""``mxfs csi``: run the CSI node plugin beside the node daemon."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from mxfs_csi import DEFAULT_DRIVER_NAME, DEFAULT_KUBELET_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``csi`` subcommand to the ``mxfs`` command line."""
    parser = subparsers.add_parser(
        "csi",
        help="serve the CSI node plugin (Identity + Node) on a unix socket",
        description="Publish models of the node's mxfs mount as read-only CSI volumes.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``csi`` options (also used by ``python -m mxfs_csi``)."""
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
        help="unix socket to serve on (default: $CSI_ENDPOINT or unix:///csi/csi.sock)",
    )
    parser.add_argument(
        "--node-id",
        default=socket.gethostname(),
        help="this node's id as the CO knows it (Kubernetes: the node name)",
    )
    parser.add_argument(
        "--mountpoint",
        type=Path,
        default=Path("/models"),
        help="where the node daemon mounts the model tree (default: /models)",
    )
    parser.add_argument(
        "--driver-name",
        default=DEFAULT_DRIVER_NAME,
        help=f"CSI driver name, as in the CSIDriver object (default: {DEFAULT_DRIVER_NAME})",
    )
    parser.add_argument(
        "--kubelet-dir",
        type=Path,
        default=Path(os.environ.get("KUBELET_DIR", str(DEFAULT_KUBELET_DIR))),
        help=f"kubelet's root directory; target paths outside it are refused "
        f"(default: $KUBELET_DIR or {DEFAULT_KUBELET_DIR})",
    )
    parser.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")


def run(args: argparse.Namespace) -> int:
    """Serve until terminated."""
    from mxfs_csi.server import CsiConfig, serve

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = CsiConfig(
        endpoint=args.endpoint,
        node_id=args.node_id,
        mountpoint=args.mountpoint,
        driver_name=args.driver_name,
        workers=args.workers,
        kubelet_dir=args.kubelet_dir,
    )
    return serve(config)
