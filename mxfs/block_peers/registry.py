"""Client of the server's block-holder registry (sync; callers run it in worker threads)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

from mxfs.block_peers.auth import call_metadata
from mxfs.block_peers.bitmap import BitmapError, BlockSet
from mxfs.errors import BlockUnavailable
from mxfs.rpc import peer_pb2, peer_pb2_grpc
from mxfs.rpc.channel import open_channel


@dataclass(frozen=True)
class PeerNode:
    """A daemon that serves blocks: stable id and the address of its peer service."""

    node_id: str
    address: str


@dataclass(frozen=True)
class Holder:
    """A node and the blocks of one file it holds."""

    node: PeerNode
    blocks: BlockSet


@dataclass(frozen=True)
class FileHoldings:
    """What this node holds of one file, as sent in an announce."""

    sha256: str
    block_size: int
    blocks: BlockSet


def _node_pb(node: PeerNode) -> peer_pb2.PeerNode:
    return peer_pb2.PeerNode(node_id=node.node_id, address=node.address)


def _node(pb: peer_pb2.PeerNode) -> PeerNode:
    return PeerNode(pb.node_id, pb.address)


class HolderRegistryClient:
    """Announce / withdraw / look up block holders on the server, with the cluster token."""

    def __init__(self, address: str, token: str, timeout_s: float = 5.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = call_metadata(token)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: peer_pb2_grpc.BlockHoldersStub | None = None

    def _get_stub(self) -> peer_pb2_grpc.BlockHoldersStub:
        with self._lock:
            if self._stub is None:
                self._channel = open_channel(self.address)
                self._stub = peer_pb2_grpc.BlockHoldersStub(self._channel)
            return self._stub

    def _call(self, method: str, request, what: str):
        try:
            return getattr(self._get_stub(), method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            raise BlockUnavailable(f"holder registry {what}: {code.name if code else 'error'}: "
                                   f"{exc.details() if hasattr(exc, 'details') else exc}") from exc

    def announce(self, node: PeerNode, files: list[FileHoldings], swarms: list[str],
                 left_swarms: list[str] | None = None) -> float:
        """Send changed holdings + live swarms; returns the registry's TTL in seconds."""
        req = peer_pb2.AnnounceRequest(node=_node_pb(node), swarms=swarms, left_swarms=left_swarms or [])
        for f in files:
            req.files.add(sha256=f.sha256, block_size=f.block_size, bitmap=f.blocks.encode())
        return float(self._call("Announce", req, "announce").ttl_s)

    def withdraw(self, node_id: str) -> None:
        self._call("Withdraw", peer_pb2.WithdrawRequest(node_id=node_id), "withdraw")

    def holders(self, sha256: str, block_size: int, swarm: str = "") -> tuple[list[Holder], list[PeerNode]]:
        """Live holders of a file's blocks, and the live members of ``swarm``."""
        reply = self._call("Holders", peer_pb2.HoldersRequest(sha256=sha256, block_size=block_size, swarm=swarm),
                           "lookup")
        holders = []
        for h in reply.holders:
            try:
                holders.append(Holder(_node(h.node), BlockSet.decode(h.bitmap)))
            except BitmapError:
                continue  # one bad record must not hide the others
        return holders, [_node(n) for n in reply.swarm]

    def nodes(self) -> list[PeerNode]:
        return [_node(n) for n in self._call("ListNodes", peer_pb2.ListNodesRequest(), "list").nodes]

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None
