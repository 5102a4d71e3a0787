"""Every environment variable mxfs reads, parsed and documented in one place.

Stdlib only. Other modules never call ``os.environ`` directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str | None
    doc: str

    def get(self) -> str | None:
        value = os.environ.get(self.name)
        return value if value not in (None, "") else self.default


MODEL_EXPRESS_URL = EnvVar("MODEL_EXPRESS_URL", None, "Address of the mxfs/ModelExpress server (host:port).")
MODEL_EXPRESS_NO_SHARED_STORAGE = EnvVar(
    "MODEL_EXPRESS_NO_SHARED_STORAGE", "0", "1: stream model files to the client instead of sharing storage."
)
MODEL_EXPRESS_CACHE_DIRECTORY = EnvVar(
    "MODEL_EXPRESS_CACHE_DIRECTORY", None, "Client-side HF-layout cache directory for downloads."
)
HF_HUB_CACHE = EnvVar("HF_HUB_CACHE", None, "Hugging Face hub cache directory.")
HF_TOKEN = EnvVar("HF_TOKEN", None, "Hugging Face token (read only by the side that talks to the Hub).")
HF_ENDPOINT = EnvVar("HF_ENDPOINT", None, "Hugging Face Hub endpoint (a mirror or a local HF-compatible server).")
AZURE_STORAGE_ACCOUNT_NAME = EnvVar(
    "AZURE_STORAGE_ACCOUNT_NAME", None, "Azure storage account of az://container/prefix origins."
)
AZURE_STORAGE_CONNECTION_STRING = EnvVar(
    "AZURE_STORAGE_CONNECTION_STRING", None, "Azure connection string (alternative to account + default credential)."
)
MX_MODEL_URI = EnvVar(
    "MX_MODEL_URI", None, "vLLM mx loader: stream weights from s3://, gs://, az://, an absolute path or an HF id."
)
MX_METADATA_BACKEND = EnvVar("MX_METADATA_BACKEND", "embedded", "Registry backend: embedded or redis.")
MX_REDIS_URL = EnvVar("MX_REDIS_URL", None, "Redis URL for the registries when MX_METADATA_BACKEND=redis.")
REDIS_URL = EnvVar("REDIS_URL", None, "Alias of MX_REDIS_URL (ModelExpress reads both).")
MX_REDIS_HOST = EnvVar("MX_REDIS_HOST", None, "Redis host when no URL is set (alias REDIS_HOST).")
REDIS_HOST = EnvVar("REDIS_HOST", None, "Alias of MX_REDIS_HOST.")
MX_REDIS_PORT = EnvVar("MX_REDIS_PORT", "6379", "Redis port with MX_REDIS_HOST (alias REDIS_PORT).")
REDIS_PORT = EnvVar("REDIS_PORT", None, "Alias of MX_REDIS_PORT.")
MX_WORKER_HOST = EnvVar("MX_WORKER_HOST", None, "Address other nodes use to reach this node.")
MXFS_PEER_TOKEN = EnvVar("MXFS_PEER_TOKEN", None, "Shared cluster token for peer and registry calls.")
MX_AUTH_TOKEN = EnvVar("MX_AUTH_TOKEN", None, "Cluster token: the server requires it on mutating RPCs.")
MX_AUTH_TOKEN_FILE = EnvVar("MX_AUTH_TOKEN_FILE", None, "File holding the cluster token (wins over MX_AUTH_TOKEN).")
MX_TLS_CA_FILE = EnvVar("MX_TLS_CA_FILE", None, "PEM CA bundle that https:// / grpcs:// server URLs are verified with.")
MX_P2P = EnvVar("MX_P2P", "1", "vLLM 'mx' loader: 1 pulls weights from running sources and publishes itself.")
MX_P2P_TIMEOUT_S = EnvVar("MX_P2P_TIMEOUT_S", "120", "Bound on one whole NIXL pull (seconds).")
MX_P2P_MAX_TRIES = EnvVar("MX_P2P_MAX_TRIES", "3", "At most this many sources are tried before loading files.")
MX_HEARTBEAT_TIMEOUT_SECS = EnvVar(
    "MX_HEARTBEAT_TIMEOUT_SECS", "90", "Server: a P2P source without a status update this long turns STALE."
)
MX_GC_TIMEOUT_SECS = EnvVar("MX_GC_TIMEOUT_SECS", "3600", "Server: a STALE P2P source is deleted this much later.")
MX_HEARTBEAT_INTERVAL_SECS = EnvVar(
    "MX_HEARTBEAT_INTERVAL_SECS", "30", "P2P sources: seconds between heartbeats (UpdateStatus READY)."
)
MX_REAPER_SCAN_INTERVAL_SECS = EnvVar(
    "MX_REAPER_SCAN_INTERVAL_SECS", "30", "Server: seconds between passes of the P2P source reaper."
)
MX_NIXL_BACKENDS = EnvVar("MX_NIXL_BACKENDS", "UCX", "Comma-separated NIXL backends for weight transfers.")
MXFS_LOG_FORMAT = EnvVar("MXFS_LOG_FORMAT", "auto", "Log format: auto (text on a tty, json otherwise), text, json.")

ALL = [
    MODEL_EXPRESS_URL, MODEL_EXPRESS_NO_SHARED_STORAGE, MODEL_EXPRESS_CACHE_DIRECTORY,
    HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_CONNECTION_STRING,
    MX_MODEL_URI, MX_METADATA_BACKEND, MX_REDIS_URL, REDIS_URL, MX_REDIS_HOST, REDIS_HOST, MX_REDIS_PORT,
    REDIS_PORT, MX_WORKER_HOST,
    MXFS_PEER_TOKEN, MXFS_LOG_FORMAT, MX_AUTH_TOKEN, MX_AUTH_TOKEN_FILE, MX_TLS_CA_FILE,
    MX_P2P, MX_P2P_TIMEOUT_S, MX_P2P_MAX_TRIES, MX_HEARTBEAT_TIMEOUT_SECS, MX_GC_TIMEOUT_SECS,
    MX_HEARTBEAT_INTERVAL_SECS, MX_REAPER_SCAN_INTERVAL_SECS, MX_NIXL_BACKENDS,
]

def flag(var: EnvVar) -> bool:
    """Parse a boolean variable (1/true/yes/on)."""
    return (var.get() or "").strip().lower() in ("1", "true", "yes", "on")


def seconds(var: EnvVar) -> float:
    """A positive duration in seconds (fractions allowed); a clear error for anything else."""
    raw = var.get()
    try:
        value = float(raw or "")
    except ValueError:
        raise ValueError(f"{var.name}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{var.name}={raw!r} must be positive")
    return value


def redis_url() -> str | None:
    """MX_REDIS_URL, else REDIS_URL, else redis://MX_REDIS_HOST:MX_REDIS_PORT (ModelExpress's order)."""
    url = MX_REDIS_URL.get() or REDIS_URL.get()
    if url:
        return url
    host = MX_REDIS_HOST.get() or REDIS_HOST.get()
    if not host:
        return None
    port = os.environ.get(MX_REDIS_PORT.name) or REDIS_PORT.get() or MX_REDIS_PORT.default
    return f"redis://{host}:{port}"




def hf_hub_cache() -> Path:
    """Client download cache: MODEL_EXPRESS_CACHE_DIRECTORY -> HF_HUB_CACHE -> ~/.cache/huggingface/hub."""
    for var in (MODEL_EXPRESS_CACHE_DIRECTORY, HF_HUB_CACHE):
        value = var.get()
        if value:
            return Path(value)
    return Path.home() / ".cache" / "huggingface" / "hub"
