"""Layered configuration: CLI > ``MODEL_EXPRESS_*`` env > YAML (--config) > defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mxfs.manifest.builder import DEFAULT_BLOCK_SIZE, MIN_BLOCK_SIZE, check_block_size
from mxfs.manifest.names import parse_model_ref

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _opt(default: Any, help: str, env: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"help": help, "env": env})


@dataclass
class ServerConfig:
    """Settings of ``mxfs server`` (YAML section ``server``)."""

    host: str = _opt("0.0.0.0", "gRPC listen address", ("MODEL_EXPRESS_SERVER_HOST",))
    port: int = _opt(8001, "gRPC port", ("MODEL_EXPRESS_SERVER_PORT",))
    cache_dir: str = _opt(
        "/var/cache/mxfs-server", "server cache and state directory", ("MODEL_EXPRESS_CACHE_DIRECTORY",)
    )
    models_dir: str = _opt("", "local origin: DIR/<org>/<name>/ is a model", ("MODEL_EXPRESS_MODELS_DIR",))
    block_size: int = _opt(DEFAULT_BLOCK_SIZE, "manifest block size in bytes (power of two)")
    chunk_size: int = _opt(1024 * 1024, "default stream chunk size in bytes")
    max_workers: int = _opt(32, "gRPC worker threads")
    metrics_port: int = _opt(9091, "Prometheus metrics port (0 disables)")
    data_port: int = _opt(8002, "HTTP(S with TLS) port for block ranges (0 disables; gRPC ReadRange still works)")
    log_level: str = _opt("INFO", "log level", ("MODEL_EXPRESS_LOG_LEVEL",))
    peer_token: str = _opt("", "cluster token of the block-holder registry (empty = peer cache off)",
                           ("MXFS_PEER_TOKEN",))
    holder_ttl: float = _opt(30.0, "seconds a silent node stays in the block-holder registry")
    auth_token: str = _opt("", "cluster token every mutating RPC must carry (empty = mutating RPCs open)",
                           ("MX_AUTH_TOKEN",))
    auth_token_file: str = _opt("", "file holding the cluster token (wins over auth_token)", ("MX_AUTH_TOKEN_FILE",))
    auth_reads: bool = _opt(False, "also require the token for read-only calls (health stays open)")
    tls_cert_file: str = _opt("", "PEM certificate (chain) of the gRPC port; with tls_key_file turns TLS on")
    tls_key_file: str = _opt("", "PEM private key of tls_cert_file")
    metrics_host: str = _opt("", "listen address of the metrics endpoint (default: host)")
    origins: list = _opt(None, "remote origins tried after models_dir: hf, s3://B/P, gs://B/P, az://C/P, /abs/dir")
    model_uris: list = _opt(None, "single models bound to a location: ORG/NAME=URI")
    origin_workers: int = _opt(8, "parallel ranged reads from remote origins")
    origin_mode: str = _opt("lazy", "remote files: lazy (blocks read from the origin when first needed) or "
                            "hydrate (whole snapshot downloaded on the first manifest request)")
    origin_eager_bytes: int = _opt(16 * 1024 * 1024, "lazy mode: remote files up to this size are downloaded "
                                   "with the manifest (configs, tokenizers)")
    origin_block_store_bytes: int = _opt(0, "bound of the server's store of lazily read origin blocks "
                                         "(0 = 90% of the free disk when the store is first used)")
    max_models: int = _opt(0, "evict the least recently used cached models beyond this count (0 = no bound)")
    max_unused_s: float = _opt(0.0, "evict cached models unused for this many seconds (0 = never)")
    min_free_bytes: int = _opt(0, "evict cached models while the cache disk has less free space (0 = off)")
    evict_interval_s: float = _opt(60.0, "seconds between eviction passes")
    negative_ttl: float = _opt(30.0, "seconds a model name no origin has is remembered (0 = ask every time)")
    lease_ttl_s: float = _opt(30.0, "download lease TTL; another replica takes over a download after it")
    metadata_backend: str = _opt("", "model registry backend: embedded or redis", ("MX_METADATA_BACKEND",))
    redis_url: str = _opt("", "Redis URL when metadata_backend is redis", ("REDIS_URL",))

    def validate(self) -> None:
        _resolve_auth(self)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("TLS needs both tls_cert_file and tls_key_file")
        _check_port(self.port, "port")
        _check_port(self.data_port, "data_port", allow_zero=True)
        if not 1.0 <= self.holder_ttl <= 3600:
            raise ConfigError("holder_ttl must be between 1 and 3600 seconds")
        if self.origin_workers < 1:
            raise ConfigError("origin_workers must be >= 1")
        if self.origin_mode not in ("lazy", "hydrate"):
            raise ConfigError(f"origin_mode must be lazy or hydrate, not {self.origin_mode!r}")
        if self.origin_eager_bytes < 0 or self.origin_block_store_bytes < 0:
            raise ConfigError("origin_eager_bytes and origin_block_store_bytes must be >= 0")
        if min(self.max_models, self.max_unused_s, self.min_free_bytes) < 0 or self.evict_interval_s <= 0:
            raise ConfigError("eviction bounds must be >= 0 and evict_interval_s > 0")
        if self.lease_ttl_s < 1:
            raise ConfigError("lease_ttl_s must be >= 1")
        if not 0 <= self.negative_ttl <= 86400:
            raise ConfigError("negative_ttl must be between 0 and 86400 seconds")
        _check_port(self.metrics_port, "metrics_port", allow_zero=True)
        try:
            check_block_size(self.block_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not 4096 <= self.chunk_size <= 4 * 1024 * 1024:
            raise ConfigError("chunk_size must be between 4 KiB and 4 MiB")
        if self.max_workers < 1:
            raise ConfigError("max_workers must be >= 1")
        if not self.cache_dir:
            raise ConfigError("cache_dir is required")
        if self.metadata_backend.lower() not in ("", "embedded", "redis"):
            raise ConfigError(f"metadata_backend must be embedded or redis, not {self.metadata_backend!r}")

    def check_paths(self) -> None:
        """What :meth:`validate` leaves to the machine that runs the server (``--validate-config``
        checks the shape alone, elsewhere): the cache directory can be created and written, the
        local model directories exist, the TLS files hold a matching PEM certificate and key."""
        _check_writable_dir(self.cache_dir, "cache_dir")
        local = [("models_dir", self.models_dir)] if self.models_dir else []
        local += [("origin", o.strip()) for o in self.origins or [] if o.strip().startswith("/")]
        for name, path in local:
            if not os.path.isdir(path):
                what = "is not a directory" if os.path.exists(path) else "does not exist"
                raise ConfigError(f"{name} {path} {what}")
        if self.tls_cert_file:
            check_tls_pair(self.tls_cert_file, self.tls_key_file)


@dataclass
class MountConfig:
    """Settings of ``mxfs mount`` (YAML section ``mount``)."""

    mountpoint: str = _opt("", "where the model tree is mounted")
    server: str = _opt("", "server address host:port", ("MODEL_EXPRESS_URL",))
    cache_dir: str = _opt("/var/cache/mxfs", "local block cache directory", ("MXFS_CACHE_DIR",))
    cache_size: int = _opt(0, "cache bound in bytes (0 = 90% of the free disk plus what the cache holds)")
    cache_index_size: int = _opt(1 << 34, "lmdb map size of the cache index (address space; a full map "
                                 "only stops caching)")
    models: list = _opt(None, "models to resolve at start (org/name[@rev])")
    fetch_timeout: float = _opt(10.0, "seconds before a block fetch from a tier is given up")
    readahead_blocks: int = _opt(8, "max blocks read ahead on sequential access (also when a reader's file "
                                    "is hydrated; 0: neither)")
    fetch_workers: int = _opt(16, "concurrent block fetches")
    negative_ttl: float = _opt(30.0, "seconds a model name the server did not find is remembered "
                               "(0 = ask every time)")
    metrics_port: int = _opt(0, "Prometheus metrics port (0 disables)")
    metrics_host: str = _opt("127.0.0.1", "listen address of the metrics endpoint (the pod IP to be scraped)")
    log_level: str = _opt("INFO", "log level", ("MODEL_EXPRESS_LOG_LEVEL",))
    auth_token: str = _opt("", "cluster token sent with every call to the server and peers", ("MX_AUTH_TOKEN",))
    auth_token_file: str = _opt("", "file holding the cluster token (wins over auth_token)", ("MX_AUTH_TOKEN_FILE",))
    tls_ca_file: str = _opt("", "PEM CA that https:// / grpcs:// servers and TLS peers are verified with",
                            ("MX_TLS_CA_FILE",))
    tls_cert_file: str = _opt("", "PEM certificate of this node's peer port; with tls_key_file peers talk TLS")
    tls_key_file: str = _opt("", "PEM private key of tls_cert_file")
    tls_peer_name: str = _opt("", "name checked in peer certificates (peers are reached by IP)")
    allow_other: bool = _opt(True, "let other users (and containers) read the mount")
    passthrough: bool = _opt(True, "let the kernel read complete, verified files from the cache itself "
                             "(FUSE passthrough, Linux >= 6.9; off: the daemon answers their reads from the blob)")
    peer_port: int = _opt(0, "port of this node's peer block service (0 = peer cache off)")
    peer_host: str = _opt("0.0.0.0", "listen address of the peer block service")
    peer_advertise: str = _opt("", "address other nodes use to reach this one (default: peer_host or hostname)",
                               ("MX_WORKER_HOST",))
    peer_token: str = _opt("", "shared cluster token for peer and registry calls", ("MXFS_PEER_TOKEN",))
    peer_swarm: bool = _opt(True, "cold fleets split first fetches between nodes, then exchange")
    peer_fill: bool = _opt(True, "in a cold swarm, hydrate the whole model in a per-node order (spreads the fleet)")
    peer_hedge: float = _opt(1.0, "min seconds before a slow peer fetch is hedged to the server")
    peer_workers: int = _opt(16, "concurrent peer requests served (bounds memory: workers x block size)")
    origin_direct: list = _opt(None, "origins this node reads blocks from itself (hf, s3://B/P, ...), "
                               "with its own credentials; must match the server's --origin")

    def validate(self) -> None:
        _resolve_auth(self)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("peer TLS needs both tls_cert_file and tls_key_file")
        if not self.mountpoint:
            raise ConfigError("mountpoint is required")
        if not self.server:
            raise ConfigError("a server address is required (--server or MODEL_EXPRESS_URL)")
        if self.cache_size < 0:
            raise ConfigError("cache_size must be >= 0")
        if 0 < self.cache_size < MIN_BLOCK_SIZE:
            raise ConfigError(f"cache_size {self.cache_size} is smaller than one block ({MIN_BLOCK_SIZE // 1024} KiB "
                              "at least): nothing could be cached (a unit missing? e.g. 500GiB; 0 = the default)")
        if not 32 * 1024 <= self.cache_index_size <= MAX_INDEX_BYTES:
            raise ConfigError(f"cache_index_size {self.cache_index_size} must be between 32KiB and 1TiB "
                              "(the lmdb map is address space; the default 16GiB holds tens of millions of blocks)")
        _check_not_file(self.mountpoint, "mountpoint")
        _check_not_file(self.cache_dir, "cache_dir")
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            _check_readable(getattr(self, name), name)
        for text in self.models or []:
            try:
                parse_model_ref(text)
            except ValueError as exc:
                raise ConfigError(f"model {text!r}: {exc}") from None
        if self.fetch_timeout <= 0:
            raise ConfigError("fetch_timeout must be > 0")
        if not 0 <= self.readahead_blocks <= 256:
            raise ConfigError("readahead_blocks must be in [0, 256]")
        if self.fetch_workers < 1:
            raise ConfigError("fetch_workers must be >= 1")
        if not 0 <= self.negative_ttl <= 86400:
            raise ConfigError("negative_ttl must be between 0 and 86400 seconds")
        _check_port(self.metrics_port, "metrics_port", allow_zero=True)
        _check_port(self.peer_port, "peer_port", allow_zero=True)
        if self.peer_port and not self.peer_token:
            raise ConfigError("the peer cache needs a cluster token (--peer-token or MXFS_PEER_TOKEN)")
        if self.peer_hedge <= 0:
            raise ConfigError("peer_hedge must be > 0")
        if not 1 <= self.peer_workers <= 256:
            raise ConfigError("peer_workers must be in [1, 256]")


def _resolve_auth(cfg: ServerConfig | MountConfig) -> None:
    """Read the token file into ``auth_token``; the peer cache uses the cluster token by default."""
    from mxfs.rpc.auth import load_token

    if cfg.auth_token_file or cfg.auth_token:
        try:
            cfg.auth_token = load_token(cfg.auth_token, cfg.auth_token_file)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if not cfg.peer_token:
        cfg.peer_token = cfg.auth_token


def _check_writable_dir(path: str, name: str) -> None:
    """``path`` is (or can be made) a directory this process can create files in."""
    import tempfile

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".mxfs-write-check-"):
            pass
    except FileExistsError:
        raise ConfigError(f"{name} {path} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{name} {path} is not a writable directory: {exc.strerror or exc}") from exc


def check_tls_pair(cert_file: str, key_file: str) -> None:
    """Both files readable, PEM, and the key the certificate's."""
    import ssl

    for path, what, marker in ((cert_file, "TLS certificate file", b"-----BEGIN CERTIFICATE-----"),
                               (key_file, "TLS key file", b"PRIVATE KEY-----")):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
        if marker not in data:
            kind = "certificate" if "certificate" in what else "private key"
            raise ConfigError(f"the {what} {path} holds no PEM {kind}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the TLS certificate {cert_file} and key {key_file} cannot be used together: "
                          f"{getattr(exc, 'reason', None) or exc}") from exc


MAX_INDEX_BYTES = 1 << 40  # past this, mapping the index fails on common kernels (address space)


def _check_not_file(path: str, name: str) -> None:
    """A path the daemon makes (or uses) as a directory must not be something else already."""
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{name} {path} exists and is not a directory")


def _check_readable(path: str, name: str) -> None:
    if not path:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name} {path}: {exc.strerror}") from None


def _check_port(port: int, name: str, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(f"{name} {port} is not a valid port")


def _coerce(value: Any, default: Any, name: str) -> Any:
    kind = type(default) if default is not None else None
    try:
        if kind is bool and isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        if kind is int and isinstance(value, str):
            return parse_size(value)
        if kind in (int, float, str) and not isinstance(value, kind):
            return kind(value)
        if name in ("models", "origins", "model_uris", "origin_direct") and isinstance(value, str):
            return [v for v in value.replace(",", " ").split() if v]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot use {value!r}: {exc}") from exc
    return value


def parse_size(text: str) -> int:
    """``4194304``, ``4MiB``, ``20G``, ``1.5GiB`` -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    try:
        value = float(number) * mult
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    if not 0 <= value < float(1 << 63):  # also refuses inf and nan
        raise ValueError(f"not a size: {text!r} (a size is 0 or more bytes)")
    return int(value)


def load(
    cls: type[T], section: str, cli: dict[str, Any] | None = None, yaml_path: str | None = None
) -> T:
    """Merge defaults < YAML section < env < CLI (``None`` CLI values are ignored)."""
    values: dict[str, Any] = {}
    if yaml_path:
        try:
            doc = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {yaml_path}: {exc}") from exc
        part = doc.get(section, {}) if isinstance(doc, dict) else None
        if not isinstance(part, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(part) - known
        if unknown:
            raise ConfigError(f"unknown keys in section {section!r}: {sorted(unknown)}")
        values.update(part)
    for f in fields(cls):  # type: ignore[arg-type]
        for name in (f"MODEL_EXPRESS_{section.upper()}_{f.name.upper()}", *f.metadata.get("env", ())):
            value = os.environ.get(name)  # only a value set here: a variable's own default never wins over the file
            if value:
                values[f.name] = value
                break
    for key, value in (cli or {}).items():
        if value is not None:
            values[key] = value
    defaults = cls()
    merged = {k: _coerce(v, getattr(defaults, k), k) for k, v in values.items()}
    cfg = dataclasses.replace(defaults, **merged)
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def default_yaml() -> str:
    """The default configuration of every section, with comments."""
    lines = ["# mxfs configuration (CLI > MODEL_EXPRESS_* env > this file > defaults)"]
    for section, cls in (("server", ServerConfig), ("mount", MountConfig)):
        lines.append(f"{section}:")
        for f in fields(cls):
            default = f.default if f.default is not None else []
            lines.append(f"  # {f.metadata['help']}")
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"  {f.name}: {value}")
    return "\n".join(lines) + "\n"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--print-config``, ``--validate-config`` for a subcommand."""
    parser.add_argument("--config", help="YAML config file (sections: server, mount)")
    parser.add_argument("--print-config", action="store_true", help="print the default config and exit")
    parser.add_argument(
        "--validate-config", action="store_true", help="validate the merged config and exit"
    )
