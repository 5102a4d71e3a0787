"""Prometheus metrics of the server (one registry per server instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("mxfs_server_requests", "RPCs handled", ["method"], registry=r)
        self.errors = Counter("mxfs_server_errors", "RPCs failed", ["method", "code"], registry=r)
        self.bytes_served = Counter("mxfs_server_bytes_served", "bytes sent in ranges and streams", registry=r)
        self.blocks_served = Counter(
            "mxfs_server_blocks_served", "manifest blocks covered by served ranges", registry=r
        )
        self.origin_bytes = Counter(
            "mxfs_server_origin_bytes", "bytes read from remote origins (HF, object stores)", registry=r
        )
        self.latency = Histogram("mxfs_server_request_seconds", "RPC latency", ["method"], registry=r)
        self.models = Gauge("mxfs_server_models", "models in the catalog", registry=r)
