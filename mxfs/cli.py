"""The ``mxfs`` command line: server, mount, umount, health, model, prefetch, status, demo, csi."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mxfs import __version__, envs
from mxfs.config import ConfigError, MountConfig, ServerConfig, add_config_args, default_yaml, load, parse_size
from mxfs.download import cli as download_cli
from mxfs.errors import MxfsError

log = logging.getLogger("mxfs")


def _server_address(args: argparse.Namespace) -> str:
    address = args.server or envs.MODEL_EXPRESS_URL.get()
    if not address:
        raise ConfigError("no server address: pass --server or set MODEL_EXPRESS_URL")
    return address


def _config_from(args: argparse.Namespace, cls: type, section: str):
    """The ``section`` config from defaults, ``--config``, env and every flag whose destination
    is one of ``cls``'s fields (none is listed by hand, so none can be left out)."""
    if args.print_config:
        print(default_yaml(), end="")
        raise SystemExit(0)
    cli = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    cfg = load(cls, section, cli, args.config)
    if args.validate_config:
        shown = {k: ("***" if "token" in k and v else v) for k, v in dataclasses.asdict(cfg).items()}
        print(f"config OK: {shown}")
        raise SystemExit(0)
    return cfg


# -- server --------------------------------------------------------------------------------

def cmd_server(args: argparse.Namespace) -> int:
    from mxfs import logs
    from mxfs.server import app

    cfg = _config_from(args, ServerConfig, "server")
    logs.setup(cfg.log_level)
    return app.run(cfg)


def add_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the mxfs server (gRPC)")
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 8001)")
    p.add_argument("--cache-dir", help="cache and state directory")
    p.add_argument("--models-dir", help="local origin: DIR/<org>/<name>/ is a model")
    p.add_argument("--block-size", type=parse_size, help="manifest block size, e.g. 4MiB")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 = off, default 9091)")
    p.add_argument("--data-port", type=int, help="HTTP(S with TLS) port for block ranges (0 = off, default 8002)")
    p.add_argument("--max-workers", type=int, help="gRPC worker threads")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--peer-token", help="cluster token: enables the block-holder registry ($MXFS_PEER_TOKEN)")
    p.add_argument("--holder-ttl", type=float, help="seconds a silent node stays registered (default 30)")
    p.add_argument("--origin", dest="origins", action="append",
                   help="remote origin (repeatable): hf, s3://B/P, gs://B/P, az://C/P, /abs/dir")
    p.add_argument("--model-uri", dest="model_uris", action="append", help="ORG/NAME=URI (repeatable)")
    p.add_argument("--origin-mode", choices=["lazy", "hydrate"],
                   help="remote files: lazy (blocks read from the origin when first needed, default) or "
                        "hydrate (whole snapshot downloaded on the first manifest request)")
    p.add_argument("--origin-eager-bytes", type=parse_size,
                   help="lazy mode: download remote files up to this size with the manifest (default 16MiB)")
    p.add_argument("--origin-block-store-bytes", type=parse_size,
                   help="bound of the server's store of lazily read origin blocks (default 90%% of free disk)")
    p.add_argument("--max-models", type=int, help="evict LRU cached models beyond this count")
    p.add_argument("--max-unused", dest="max_unused_s", type=float, help="evict models unused this many seconds")
    p.add_argument("--min-free", dest="min_free_bytes", type=parse_size, help="keep this much disk free, e.g. 20GiB")
    p.add_argument("--auth-token-file", help="cluster token file: mutating RPCs need the token "
                   "($MX_AUTH_TOKEN_FILE, or the token itself in $MX_AUTH_TOKEN)")
    p.add_argument("--auth-reads", action=argparse.BooleanOptionalAction, default=None,
                   help="require the token for read-only calls and the data plane too (health stays open)")
    p.add_argument("--tls-cert-file", help="PEM certificate of the gRPC port and the data plane (TLS on for both)")
    p.add_argument("--tls-key-file", help="PEM key of --tls-cert-file")
    p.add_argument("--metrics-host", help="listen address of the metrics endpoint (default: --host)")
    p.add_argument("--metadata-backend", help="model registry: embedded (default) or redis")
    p.add_argument("--redis-url", help="Redis URL for --metadata-backend redis")
    add_config_args(p)
    p.set_defaults(func=cmd_server)


# -- mount ---------------------------------------------------------------------------------

def cmd_mount(args: argparse.Namespace) -> int:
    from mxfs import logs

    cfg = _config_from(args, MountConfig, "mount")
    logs.setup(cfg.log_level)
    from mxfs_daemon.node import NodeDaemon

    return NodeDaemon(cfg).run()


def add_mount(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="run the node daemon: mount a lazy read-only model tree")
    p.add_argument("mountpoint", nargs="?", help="where to mount, e.g. /models")
    p.add_argument("--server", help="server host:port, or https://host:port for TLS (default $MODEL_EXPRESS_URL)")
    p.add_argument("--cache-dir", help="local block cache directory")
    p.add_argument("--cache-size", type=parse_size,
                   help="cache bound, e.g. 200GiB (default 90%% of free disk plus what the cache holds)")
    p.add_argument("--cache-index-size", type=parse_size,
                   help="lmdb map size of the cache index (default 16GiB; when full, blocks stop being cached)")
    p.add_argument("--model", dest="models", action="append", help="ORG/NAME[@REV] to resolve at start (repeatable)")
    p.add_argument("--fetch-timeout", type=float, help="seconds before a block fetch fails (default 10)")
    p.add_argument("--readahead-blocks", type=int,
                   help="max blocks read ahead (default 8); a reader that fills that window, or enters "
                        "4x as many blocks in any order, has its file hydrated; 0 turns both off")
    p.add_argument("--fetch-workers", type=int, help="concurrent block fetches (default 16)")
    p.add_argument("--negative-ttl", type=float,
                   help="seconds a model name the server did not find is remembered (default 30; 0 = off)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 = off)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--peer-port", type=int, help="serve cached blocks to peers on this port (0 = peer cache off)")
    p.add_argument("--peer-host", help="listen address of the peer service (default 0.0.0.0)")
    p.add_argument("--peer-advertise", help="address peers use to reach this node ($MX_WORKER_HOST)")
    p.add_argument("--peer-token", help="shared cluster token ($MXFS_PEER_TOKEN)")
    p.add_argument("--peer-swarm", action=argparse.BooleanOptionalAction, default=None,
                   help="split a cold fleet's first fetches between nodes (default on)")
    p.add_argument("--peer-fill", action=argparse.BooleanOptionalAction, default=None,
                   help="in a cold swarm, hydrate the whole model in a per-node order (default on)")
    p.add_argument("--peer-hedge", type=float, help="min seconds before a slow peer fetch also asks the server "
                   "(with --no-peer-swarm; a swarm waits 3/4 of --fetch-timeout)")
    p.add_argument("--peer-workers", type=int, help="concurrent peer requests served (default 16)")
    p.add_argument("--passthrough", action=argparse.BooleanOptionalAction, default=None,
                   help="kernel FUSE passthrough for complete, verified files (default on; "
                        "--no-passthrough: the daemon answers every read)")
    p.add_argument("--metrics-host", help="listen address of the metrics endpoint (default 127.0.0.1)")
    p.add_argument("--auth-token-file", help="cluster token file, sent to the server and peers "
                   "($MX_AUTH_TOKEN_FILE / $MX_AUTH_TOKEN)")
    p.add_argument("--tls-ca-file", help="PEM CA for https:// / grpcs:// servers and TLS peers ($MX_TLS_CA_FILE)")
    p.add_argument("--tls-cert-file", help="PEM certificate of the peer port (peers then talk TLS)")
    p.add_argument("--tls-key-file", help="PEM key of --tls-cert-file")
    p.add_argument("--tls-peer-name", help="name checked in peer certificates (peers are reached by IP)")
    p.add_argument("--origin-direct", action="append", metavar="URI",
                   help="read blocks straight from this origin with the node's own credentials "
                        "(hf, s3://bucket/prefix, ...; repeatable; same URI as the server's --origin)")
    add_config_args(p)
    p.set_defaults(func=cmd_mount)


def cmd_umount(args: argparse.Namespace) -> int:
    from mxfs_daemon.mountpoint import unmount

    unmount(args.mountpoint, lazy=args.lazy)
    return 0


def add_umount(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="unmount a mxfs mount (also a stale one)")
    p.add_argument("mountpoint")
    p.add_argument("--lazy", action="store_true", help="detach now, clean up when no longer busy")
    p.set_defaults(func=cmd_umount)


# -- client commands -------------------------------------------------------------------------

def cmd_health(args: argparse.Namespace) -> int:
    from mxfs.rpc.client import MxfsClient

    h = MxfsClient(_server_address(args)).health(timeout_s=args.timeout)
    print(f"status={h.status} version={h.version} uptime={h.uptime_s}s")
    return 0 if h.status == "ok" else 1


def cmd_model(args: argparse.Namespace) -> int:
    from mxfs.manifest.names import parse_model_ref
    from mxfs.rpc.client import MxfsClient

    client = MxfsClient(_server_address(args))
    if args.model_cmd == "list":
        for m in client.list_models():
            print(f"{m.name}\t{m.revision or '-'}\t{m.total_size}\t{m.origin or '-'}")
        return 0
    ref = parse_model_ref(args.model)
    manifest = client.get_manifest(ref.name, ref.revision)
    print(f"# {manifest.name}@{manifest.revision} block_size={manifest.block_size} "
          f"total={manifest.total_size} origin={manifest.origin}")
    for f in manifest.files:
        print(f"{f.size:>14}  {f.sha256}  {f.path}" + (f"  ({len(f.tensors)} tensors)" if f.tensors else ""))
    return 0


SERVER_HELP = "server host:port, or https://host:port for TLS (default $MODEL_EXPRESS_URL)"
CLIENT_EPILOG = ("The cluster token comes from $MX_AUTH_TOKEN_FILE or $MX_AUTH_TOKEN, the CA of an https:// "
                 "server from $MX_TLS_CA_FILE (else the system's roots).")


def add_server_option(p: argparse.ArgumentParser, nested: bool = False) -> None:
    """``--server``; ``nested``: on a subcommand under one that has it too (``mxfs model --server A
    list`` and ``mxfs model list --server A`` both work), so it leaves a value given earlier alone."""
    p.add_argument("--server", help=SERVER_HELP, **({"default": argparse.SUPPRESS} if nested else {}))


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="check a server", epilog=CLIENT_EPILOG)
    add_server_option(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    p.set_defaults(func=cmd_health)
    p = sub.add_parser("model", help="models known to a server", epilog=CLIENT_EPILOG)
    add_server_option(p)
    msub = p.add_subparsers(dest="model_cmd", required=True)
    add_server_option(msub.add_parser("list", help="list models", epilog=CLIENT_EPILOG), nested=True)
    f = msub.add_parser("files", help="list the files of a model", epilog=CLIENT_EPILOG)
    f.add_argument("model", help="ORG/NAME[@REV]")
    add_server_option(f, nested=True)
    p.set_defaults(func=cmd_model)


def cmd_prefetch(args: argparse.Namespace) -> int:
    from mxfs import logs
    from mxfs.nodectl import prefetch

    logs.setup("INFO")
    return prefetch(Path(args.path), page_cache=args.page_cache, progress=not args.no_progress, wait=args.wait)


def cmd_status(args: argparse.Namespace) -> int:
    from mxfs.nodectl import print_status

    return print_status(Path(args.mountpoint))


def add_node_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prefetch", help="hydrate a whole model through its node daemon")
    p.add_argument("path", help="MOUNTPOINT/<org>/<name> (or a hub snapshot directory)")
    p.add_argument("--page-cache", action="store_true", help="also fill the kernel page cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true",
                   help="exit 1 unless every file ended complete and verified in the node cache "
                        "(the command always follows the hydration to its end)")
    p.set_defaults(func=cmd_prefetch)
    p = sub.add_parser("status", help="models, cache and byte sources of a node daemon")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_status)


def cmd_demo(args: argparse.Namespace) -> int:
    from mxfs.demo import run_demo

    return run_demo(Path(args.dir), parse_size(args.size), check=args.check)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="embedded default: generated model + server + daemon + mount")
    p.add_argument("--dir", default=os.path.join(os.getcwd(), ".mxfs-demo"), help="working directory")
    p.add_argument("--size", default="300MiB", help="size of the generated model")
    p.add_argument("--check", action="store_true", help="verify every file through the mount, then stop")
    p.set_defaults(func=cmd_demo)


REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_server, add_mount, add_umount, add_client_commands, add_node_commands, add_demo,
    download_cli.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxfs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mxfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    try:
        from mxfs_csi.cli import register as register_csi
    except ImportError:
        pass
    else:
        register_csi(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, MxfsError, ValueError, OSError) as exc:
        logging.getLogger("mxfs").debug("mxfs %s failed", args.command, exc_info=True)
        print(f"mxfs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
