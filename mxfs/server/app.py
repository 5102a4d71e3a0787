"""Assemble and run the server: origins, catalog, gRPC services, metrics endpoint."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from mxfs import envs
from mxfs.config import ConfigError, ServerConfig
from mxfs.misses import RecentMisses
from mxfs.origins.base import Origin
from mxfs.origins.local import LocalOrigin
from mxfs.rpc import model_express_health_pb2_grpc
from mxfs.rpc.auth import server_interceptors
from mxfs.rpc.channel import CHANNEL_OPTIONS, read_pem
from mxfs.server import api, holders, modelexpress
from mxfs.server.catalog import ModelCatalog
from mxfs.server.datahttp import RangeServer
from mxfs.server.metrics import ServerMetrics
from mxfs.server.model_cache import build_remote_origins
from mxfs.server.service import HEALTH_SERVICE_NAME, SERVICE_NAME, HealthServicer, MxfsServicer, add_to_server
from mxfs.stopsignal import StopSignal
from mxfs.weight_sources import service as p2p_service

log = logging.getLogger(__name__)


@dataclass
class ServerContext:
    """What an extra service needs to plug itself into the server."""

    config: ServerConfig
    state_dir: Path
    catalog: ModelCatalog
    metrics: ServerMetrics
    grpc_server: grpc.Server
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    #: full gRPC service names reported SERVING by grpc.health.v1 once the server listens
    services: list[str] = field(default_factory=list)


#: extra services register themselves here: ``fn(ctx)`` adds servicers to ``ctx.grpc_server``
SERVICE_PLUGINS: list[Callable[[ServerContext], None]] = [holders.register, p2p_service.register, modelexpress.install,
                                                          api.install]


def build_origins(config: ServerConfig, state_dir: Path, metrics: ServerMetrics | None = None) -> list[Origin]:
    origins: list[Origin] = []
    if config.models_dir:
        origins.append(LocalOrigin(Path(config.models_dir), state_dir))
    return origins + build_remote_origins(config, state_dir, metrics.origin_bytes.inc if metrics else None)


class Server:
    """A running mxfs server; ``start()`` returns once it listens, ``stop()`` drains it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.check_paths()
        state_dir = Path(config.cache_dir)
        self.metrics = ServerMetrics()
        self.catalog = ModelCatalog(build_origins(config, state_dir, self.metrics), state_dir, config.block_size,
                                    misses=RecentMisses(config.negative_ttl))
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="mxfs-rpc"),
            # no SO_REUSEPORT: a second server on a port in use must fail, not share it
            options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
            interceptors=server_interceptors(config.auth_token, config.auth_reads),
        )
        self.ctx = ServerContext(config, state_dir, self.catalog, self.metrics, self.grpc_server)
        self.servicer = MxfsServicer(self.catalog, self.metrics, config.chunk_size)
        add_to_server(self.servicer, self.grpc_server)
        model_express_health_pb2_grpc.add_HealthServiceServicer_to_server(HealthServicer(), self.grpc_server)
        self.ctx.services += [SERVICE_NAME, HEALTH_SERVICE_NAME]
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self.port = 0
        try:
            for plugin in SERVICE_PLUGINS:
                plugin(self.ctx)
        except BaseException:
            self._undo()
            raise
        self.metrics_port = 0

    def _data_plane_tls(self) -> ssl.SSLContext | None:
        """The HTTPS context of the data plane: the gRPC port's certificate and key, or None."""
        if not self.config.tls_cert_file:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS certificate {self.config.tls_cert_file} "
                             f"and key {self.config.tls_key_file}: {exc}") from exc
        return ctx

    def _listen(self) -> int:
        bind = f"{self.config.host}:{self.config.port}"
        why = _why_not_bindable(self.config.host, self.config.port) if self.config.port else None
        if why is not None:
            raise _bind_error("--port", self.config.host, self.config.port, why)
        if not self.config.tls_cert_file:
            credentials = None
        else:
            key = read_pem(self.config.tls_key_file, "TLS key file")
            cert = read_pem(self.config.tls_cert_file, "TLS certificate file")
            credentials = grpc.ssl_server_credentials([(key, cert)])
        try:  # grpcio returns 0, or (newer) raises RuntimeError, without saying why
            port = (self.grpc_server.add_secure_port(bind, credentials) if credentials
                    else self.grpc_server.add_insecure_port(bind))
        except RuntimeError:
            port = 0
        if port == 0:
            raise _bind_error("--port", self.config.host, self.config.port, None)
        return port

    def start(self) -> None:
        """Listen on every port, or raise with none left open (the parts started are stopped)."""
        try:
            self._start()
        except BaseException:
            self._undo()
            raise

    def _undo(self) -> None:
        """Stop what a failed start or construction had started, quietly."""
        try:
            self.grpc_server.stop(None)
        except Exception:
            log.debug("stopping the gRPC server after a failed start", exc_info=True)
        for fn in reversed(self.ctx.on_stop):
            try:
                fn()
            except Exception:
                log.debug("stopping %r after a failed start", fn, exc_info=True)
        self.ctx.on_stop.clear()

    def _start(self) -> None:
        data_scheme = "off"
        if self.config.data_port:
            token = self.config.auth_token if self.config.auth_reads else ""
            tls = self._data_plane_tls()
            try:
                data = RangeServer(self.config.host, self.config.data_port, self.catalog, self.metrics,
                                   self.config.chunk_size, tls=tls, token=token)
            except OSError as exc:
                raise _bind_error("--data-port", self.config.host, self.config.data_port, exc) from exc
            data.start()
            self.servicer.data_port = data.server_address[1]
            self.ctx.on_stop.append(data.stop)
            data_scheme = f"{data.scheme}{' + token' if token else ''}"
        self.port = self._listen()
        self.grpc_server.start()
        if self.config.metrics_port:
            host = self.config.metrics_host or self.config.host
            try:
                httpd, _ = start_http_server(self.config.metrics_port, addr=host, registry=self.metrics.registry)
            except OSError as exc:
                raise _bind_error("--metrics-port", host, self.config.metrics_port, exc) from exc
            self.metrics_port = httpd.server_port
            self.ctx.on_stop.extend([httpd.server_close, httpd.shutdown])  # run in reverse
        for name in ("", *self.ctx.services):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("mxfs server listening on %s:%d (%s, data %s %s, metrics %s), origins: %s", self.config.host,
                 self.port, "TLS" if self.config.tls_cert_file else "plaintext",
                 self.servicer.data_port or "off", data_scheme, self.metrics_port or "off",
                 [o.label for o in self.catalog.origins] or "none")

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        for fn in reversed(self.ctx.on_stop):
            fn()


def _bind_error(flag: str, host: str, port: int, exc: OSError | None) -> OSError:
    """``cannot listen on HOST:PORT (--flag): reason`` (exit status 2 from the CLI)."""
    reason = (os.strerror(exc.errno) if exc.errno else str(exc)) if exc else "the address is in use or not available"
    return OSError(f"cannot listen on {host}:{port} ({flag}): {reason}")


def _why_not_bindable(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on (a port in use, an address not on this machine), or
    None: checked before gRPC binds, since gRPC does not say why (and logs a line of its own)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None  # gRPC resolves it its own way
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
        except OSError as exc:
            return exc
    return None


REDIS_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0)


def _redis_location(url: str) -> str:
    """The URL without its credentials (it is logged)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def wait_for_metadata_store(config: ServerConfig, stop: threading.Event) -> bool:
    """With ``metadata_backend: redis``, block until Redis answers; False if ``stop`` came first.

    On Kubernetes Redis may well start after the server, so an unreachable Redis is waited for,
    not fatal: one warning line per try (backing off to 15 s), nothing listens meanwhile (the
    startup probe fails, and restarts the pod if Redis never comes). A Redis that answers but
    refuses the credentials, or a malformed URL, is a configuration error: raised at once.
    """
    from mxfs.registry.store import RedisStore, backend_name, open_store

    if backend_name(config.metadata_backend) != "redis":
        return True
    store = open_store(None, "redis", config.redis_url or None)
    assert isinstance(store, RedisStore)
    import redis

    where = _redis_location(config.redis_url or envs.redis_url() or "")
    try:
        attempt = 0
        while True:
            try:
                store.ping()
            except redis.AuthenticationError as exc:
                raise ConfigError(f"Redis at {where} refused the credentials of the Redis URL: {exc}") from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                delay = REDIS_RETRY_S[min(attempt, len(REDIS_RETRY_S) - 1)]
                log.warning("metadata store: Redis at %s does not answer (%s); retrying in %gs "
                            "(the server listens once it answers)", where, exc, delay)
                if stop.wait(delay):
                    return False
                attempt += 1
                continue
            except redis.RedisError as exc:
                raise OSError(f"Redis at {where}: {exc}") from exc
            if attempt:
                log.info("metadata store: Redis at %s answers", where)
            return True
    finally:
        store.close()


def run(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT (one that comes while starting stops the server once started)."""
    stop = StopSignal()
    if not wait_for_metadata_store(config, stop.event):
        log.info("%s while waiting for Redis: not started", signal.Signals(stop.got[0]).name)
        return 0
    server = Server(config)
    server.start()
    signum = stop.wait()
    log.info("%s: shutting down", signal.Signals(signum).name)
    server.stop()
    return 0
