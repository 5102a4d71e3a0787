"""gRPC channel construction and address parsing, shared by every client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from mxfs import envs
from mxfs.rpc.auth import load_token, with_token

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


TLS_SCHEMES = ("https://", "grpcs://")
PLAIN_SCHEMES = ("http://", "grpc://")


@dataclass(frozen=True)
class ChannelSecurity:
    """How this process's clients reach servers: the cluster token and TLS trust."""

    token: str = ""  # sent as ``authorization: Bearer`` on every call
    ca_file: str = ""  # PEM roots for TLS (empty: the system's roots)
    server_name: str = ""  # name checked in the server certificate instead of the host (peers by IP)


_default: ChannelSecurity | None = None


def set_default_security(security: ChannelSecurity | None) -> None:
    """Set what :func:`open_channel` uses when no ``security`` is passed (entry points call this;
    None goes back to the environment)."""
    global _default
    _default = security


def default_security() -> ChannelSecurity:
    """The process default: as set, else ``MX_AUTH_TOKEN[_FILE]`` and ``MX_TLS_CA_FILE``."""
    if _default is not None:
        return _default
    return ChannelSecurity(load_token(), envs.MX_TLS_CA_FILE.get() or "")


def parse_address(address: str) -> tuple[str, bool]:
    """``(target, tls)`` of ``host:port``, ``http://``, ``grpc://``, ``https://``, ``grpcs://`` or ``unix:``."""
    address = address.strip()
    if not address:
        raise ValueError("empty server address (set --server or MODEL_EXPRESS_URL)")
    if address.startswith("unix:"):
        return address, False
    tls = address.startswith(TLS_SCHEMES)
    for prefix in TLS_SCHEMES + PLAIN_SCHEMES:
        if address.startswith(prefix):
            address = address[len(prefix) :]
            break
    address = address.rstrip("/")
    if ":" not in address:
        raise ValueError(f"server address {address!r} needs a port (host:port)")
    return address, tls


def normalize_address(address: str) -> str:
    """The ``host:port`` (or ``unix:``) target of an address, without its scheme."""
    return parse_address(address)[0]


def is_tls(address: str) -> bool:
    return parse_address(address)[1]


def read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc}") from exc


def open_channel(address: str, security: ChannelSecurity | None = None, tls: bool | None = None) -> grpc.Channel:
    """A channel with mxfs' message limits and reconnect policy.

    TLS for ``https://`` / ``grpcs://`` addresses (or ``tls=True``), verified with the CA
    file; the cluster token, when there is one, goes with every call.
    """
    target, scheme_tls = parse_address(address)
    sec = security or default_security()
    if tls if tls is not None else scheme_tls:
        roots = read_pem(sec.ca_file, "TLS CA file") if sec.ca_file else None
        options = [*CHANNEL_OPTIONS]
        if sec.server_name:
            options.append(("grpc.ssl_target_name_override", sec.server_name))
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options=options)
    else:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return with_token(channel, sec.token)
