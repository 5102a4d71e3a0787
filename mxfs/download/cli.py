"""``mxfs model download``: HF-layout download through the server (ModelExpress semantics)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mxfs import envs


def cmd_download(args: argparse.Namespace) -> int:
    from mxfs.config import ConfigError
    from mxfs.download.hfcache import download_model, ensure_on_server
    from mxfs.manifest.names import validate_name, validate_revision

    address = getattr(args, "server", None) or envs.MODEL_EXPRESS_URL.get()
    if not address:
        raise ConfigError("no server address: pass --server or set MODEL_EXPRESS_URL")
    name = validate_name(args.model_id)
    revision = validate_revision(args.revision) if args.revision else ""
    if not (args.no_shared_storage or envs.flag(envs.MODEL_EXPRESS_NO_SHARED_STORAGE)):
        if args.cache_dir:
            raise ConfigError("--cache-dir is where --no-shared-storage streams the files; with shared "
                              "storage the server holds them and nothing is written here")
        rev = ensure_on_server(address, name, revision, on_status=lambda s: print(s, file=sys.stderr))
        print(f"{name}@{rev} is on the server (shared storage)")
        return 0
    cache = Path(args.cache_dir) if args.cache_dir else envs.hf_hub_cache()
    bar = None

    def progress(total: int, done: int):
        nonlocal bar
        if args.no_progress:
            return lambda _n: None
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=name)
        return bar.update

    try:
        path = download_model(address, name, revision, cache, progress)
    finally:
        if bar is not None:
            bar.close()
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``download`` under the existing ``mxfs model`` command (or as ``mxfs model-download``)."""
    from mxfs.cli import add_server_option

    model = sub.choices.get("model")
    msub = next((a for a in (model._actions if model else []) if isinstance(a, argparse._SubParsersAction)), None)
    p = msub.add_parser("download", help="download a model into the local HF cache") if msub else \
        sub.add_parser("model-download", help="download a model into the local HF cache")
    p.add_argument("model_id", help="ORG/NAME")
    p.add_argument("--revision", help="branch, tag or 40-hex revision (default main)")
    p.add_argument("--no-shared-storage", action="store_true",
                   help="stream the files into the local cache ($MODEL_EXPRESS_NO_SHARED_STORAGE=1)")
    p.add_argument("--cache-dir", help="with --no-shared-storage: the HF hub cache to fill (default "
                                       "$MODEL_EXPRESS_CACHE_DIRECTORY, $HF_HUB_CACHE, ~/.cache/huggingface/hub)")
    add_server_option(p, nested=msub is not None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)
