"""gRPC channel construction and address parsing, shared by every client."""

from __future__ import annotations

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # reconnect quickly once a server comes back
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_http_proxy", 0),
    # bulk block transfer: big HTTP/2 frames and flow-control windows
    ("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1),
    ("grpc.http2.lookahead_bytes", 64 * 1024 * 1024),
    ("grpc.http2.write_buffer_size", 64 * 1024 * 1024),
]


def normalize_address(address: str) -> str:
    """Accept ``host:port``, ``http://host:port``, ``grpc://host:port`` or ``unix:///path``."""
    address = address.strip()
    if not address:
        raise ValueError("empty server address (set --server or MODEL_EXPRESS_URL)")
    if address.startswith("unix:"):
        return address
    for prefix in ("http://", "grpc://", "https://"):
        if address.startswith(prefix):
            address = address[len(prefix) :]
            break
    address = address.rstrip("/")
    if ":" not in address:
        raise ValueError(f"server address {address!r} needs a port (host:port)")
    return address


def open_channel(address: str) -> grpc.Channel:
    """An insecure channel with mxfs' message limits and reconnect policy."""
    return grpc.insecure_channel(normalize_address(address), options=CHANNEL_OPTIONS)
