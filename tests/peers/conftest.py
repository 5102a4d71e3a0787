"""Fixtures for peer-cache tests: one server with the holder registry and N peer daemons."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mxfs.block_peers.registry import HolderRegistryClient
from mxfs.demo import free_port, wait_for
from mxfs.manifest.model import Manifest
from mxfs.nodectl import status
from mxfs.rpc.client import MxfsClient
from tests.conftest import MODEL
from tests.support.cluster import MountProc, ServerProc

TOKEN = "test-cluster-token"


def peer_flags(port: int, *extra: str) -> list[str]:
    return ["--peer-port", str(port), "--peer-host", "127.0.0.1", "--peer-token", TOKEN, *extra]


@dataclass
class PeerCluster:
    server: ServerProc
    nodes: list[MountProc]
    peer_ports: list[int]
    manifest: Manifest
    registry: HolderRegistryClient
    extra_clients: list = field(default_factory=list)

    def model_dir(self, i: int) -> Path:
        return self.nodes[i].mountpoint / MODEL

    def status(self, i: int):
        return status(self.nodes[i].mountpoint)

    def tier_bytes(self, i: int, tier: str) -> int:
        return int(self.status(i).bytes_by_tier.get(tier, 0))

    def egress(self) -> float:
        return self.server.metric("mxfs_server_bytes_served_total")

    def holders(self, path: str) -> dict[str, int]:
        """node id -> number of blocks of ``path`` it holds, per the registry."""
        entry = self.manifest.file(path)
        found, _ = self.registry.holders(entry.sha256, self.manifest.block_size)
        return {h.node.node_id: len(h.blocks) for h in found}

    def wait_announced(self, node_ids: set[str] | None = None, timeout_s: float = 20.0) -> None:
        """Until every block of every file is listed as held by each of ``node_ids`` (default: any)."""
        def done() -> bool:
            for entry in self.manifest.files:
                want = entry.block_count(self.manifest.block_size)
                held = self.holders(entry.path)
                ids = node_ids or set(held)
                if not ids or any(held.get(n, 0) < want for n in ids):
                    return False
            return True

        wait_for(done, timeout_s, "holder announcements")


def read_all(model_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``model_dir`` read through the mount."""
    out = {}
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            out[p.relative_to(model_dir).as_posix()] = h.hexdigest()
    return out


def node_id_of(node: MountProc) -> str:
    return (node.cache_dir / "peer-node-id").read_text().strip()


@pytest.fixture
def peer_cluster(start_server, start_mount, monkeypatch) -> Iterator:
    """Factory: ``make(n, holder_ttl=..., extra=[...])`` -> PeerCluster of one server and n peer daemons."""
    clusters: list[PeerCluster] = []

    def make(n: int, holder_ttl: float | None = None, extra: list[str] | None = None) -> PeerCluster:
        monkeypatch.setenv("MXFS_PEER_TOKEN", TOKEN)  # the server subprocess reads it
        if holder_ttl is not None:
            monkeypatch.setenv("MODEL_EXPRESS_SERVER_HOLDER_TTL", str(holder_ttl))
        server = start_server()
        monkeypatch.delenv("MXFS_PEER_TOKEN")  # daemons get it by flag
        ports = [free_port() for _ in range(n)]
        nodes = [start_mount(server, name=f"node{i + 1}", extra=peer_flags(ports[i], *(extra or [])))
                 for i in range(n)]
        client = MxfsClient(server.address)
        manifest = client.get_manifest(MODEL)
        client.close()
        cluster = PeerCluster(server, nodes, ports, manifest, HolderRegistryClient(server.address, TOKEN))
        wait_for(lambda: len(cluster.registry.nodes()) == n, 20, f"{n} nodes in the registry")
        clusters.append(cluster)
        return cluster

    yield make
    for c in clusters:
        c.registry.close()
