"""Reading blocks from other daemons: one lazily opened channel per peer address."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

from mxfs.block_peers.auth import call_metadata
from mxfs.errors import BlockUnavailable, SourceError
from mxfs.manifest.model import BlockKey
from mxfs.rpc import peer_pb2, peer_pb2_grpc
from mxfs.rpc.channel import ChannelSecurity, open_channel

MAX_CHANNELS = 512


class PeerBusy(BlockUnavailable):
    """The peer refused because it is at its concurrency limit."""


class PeerMiss(BlockUnavailable):
    """The peer does not hold the block (any more)."""


@dataclass(frozen=True)
class PullThrough:
    """Where a swarm owner fetches a block it does not hold yet."""

    name: str
    revision: str
    path: str


class PeerClients:
    """Thread-safe pool of channels to peers, all calls carrying the cluster token."""

    def __init__(self, token: str, node_id: str, security: ChannelSecurity | None = None) -> None:
        """``security``: TLS to peers (their certificates are checked for ``server_name``); None = plaintext."""
        self.node_id = node_id
        self._security = security
        self._metadata = call_metadata(token)
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, peer_pb2_grpc.PeerBlocksStub]] = {}

    def _stub(self, address: str) -> peer_pb2_grpc.PeerBlocksStub:
        with self._lock:
            hit = self._stubs.get(address)
            if hit is None:
                if len(self._stubs) >= MAX_CHANNELS:  # drop the oldest: peers come and go
                    old = next(iter(self._stubs))
                    self._stubs.pop(old)[0].close()
                channel = open_channel(address, self._security, tls=self._security is not None)
                hit = self._stubs[address] = (channel, peer_pb2_grpc.PeerBlocksStub(channel))
            return hit[1]

    def warm(self, address: str) -> None:
        """Start connecting to ``address`` now (non-blocking).

        A swarm's links are saturated seconds after it forms; a connection opened then can lose
        its SYN to a full queue and time out (seen on the emulated fleet as UNAVAILABLE, which
        avoided the peer and sent its blocks to the server), so members are dialled up front.
        """
        stub = self._stub(address)  # noqa: F841 - creates the channel
        with self._lock:
            channel = self._stubs[address][0]
        grpc.channel_ready_future(channel)  # asks the channel to connect; nobody waits on it

    def read_block(self, address: str, key: BlockKey, length: int, timeout_s: float,
                   pull: PullThrough | None = None) -> bytearray:
        """The peer's bytes of ``key`` (unverified: the caller checks the hash)."""
        req = peer_pb2.PeerBlockRequest(
            block=peer_pb2.BlockRef(sha256=key.sha256, block_size=key.block_size, index=key.index, length=length),
            requester=self.node_id,
        )
        if pull is not None:
            req.fetch, req.name, req.revision, req.path = True, pull.name, pull.revision, pull.path
        buf = bytearray(length)
        view = memoryview(buf)
        got = 0
        try:
            for chunk in self._stub(address).ReadBlock(req, timeout=timeout_s, metadata=self._metadata):
                if chunk.offset != got or got + len(chunk.data) > length:
                    raise SourceError(f"peer {address} sent chunk at {chunk.offset}, expected {got}")
                view[got : got + len(chunk.data)] = chunk.data
                got += len(chunk.data)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.NOT_FOUND:
                raise PeerMiss(f"peer {address}: {detail}") from exc
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise PeerBusy(f"peer {address} busy: {detail}") from exc
            raise BlockUnavailable(f"peer {address}: {code.name if code else 'error'}: {detail}") from exc
        if got != length:
            raise BlockUnavailable(f"peer {address}: short block ({got} of {length} bytes)")
        return buf

    def close(self) -> None:
        with self._lock:
            for channel, _ in self._stubs.values():
                channel.close()
            self._stubs.clear()
