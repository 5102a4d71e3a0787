"""``mxfs csi`` as its own process: serves on the socket named by its flags, exits on SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from mxfs.cli import build_parser
from mxfs.rpc import csi_pb2, csi_pb2_grpc
from mxfs_csi import DEFAULT_DRIVER_NAME, cli
from tests.csi.csi_fixtures import NodeMountFixture


def test_mxfs_cli_has_the_csi_subcommand() -> None:
    args = build_parser().parse_args(["csi", "--node-id", "n1"])
    assert args.func is cli.run and args.mountpoint == Path("/models")


def test_register_adds_the_csi_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="mxfs")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["csi", "--endpoint", "unix:///x/csi.sock", "--node-id", "n1", "--mountpoint", "/m"])
    assert args.func is cli.run
    assert (args.endpoint, args.node_id, args.mountpoint) == (
        "unix:///x/csi.sock",
        "n1",
        Path("/m"),
    )
    assert args.driver_name == DEFAULT_DRIVER_NAME


def test_csi_process_serves_and_stops(bind_node_mount: NodeMountFixture, short_tmp: Path) -> None:
    sock = short_tmp / "plugin" / "csi.sock"
    argv = [sys.executable, "-m", "mxfs", "csi", "--endpoint", f"unix://{sock}"]
    argv += ["--node-id", "node-b", "--mountpoint", str(bind_node_mount.mountpoint)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no socket after 30 s"
            time.sleep(0.05)
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            identity = csi_pb2_grpc.IdentityStub(channel)
            node = csi_pb2_grpc.NodeStub(channel)
            info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
            assert info.name == DEFAULT_DRIVER_NAME
            assert identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value is True
            assert node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10).node_id == "node-b"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not sock.exists()  # the socket is removed on a clean stop
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
