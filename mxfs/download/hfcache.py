"""Download a model from the server into an HF-layout cache: verified, resumable, atomic.

Layout (what ``huggingface_hub`` and vLLM read with ``HF_HUB_OFFLINE=1``)::

    <cache>/models--org--name/blobs/<sha256>           complete, verified file contents
    <cache>/models--org--name/blobs/<sha256>.incomplete a download in progress (resumed)
    <cache>/models--org--name/snapshots/<commit>/<path> -> ../../blobs/<sha256>
    <cache>/models--org--name/refs/<branch>             <commit>

Whole files come through ModelExpress ``StreamModelFiles``; an interrupted file resumes
from its ``.incomplete`` length through ``ReadRange``. A blob is published (renamed) only
after its sha256 matches the manifest, and the snapshot directory appears only once
every file is there, so no partial model is ever visible.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from mxfs.errors import IntegrityError, ModelNotFound, SourceError
from mxfs.fileio import atomic_write
from mxfs.manifest import hashing
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import DEFAULT_REVISION, hub_folder, is_commit, validate_relpath
from mxfs.rpc import model_express_model_pb2 as pb
from mxfs.rpc import model_express_model_pb2_grpc as pb_grpc
from mxfs.rpc.channel import open_channel
from mxfs.rpc.client import MxfsClient, translate_rpc_error

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
HASHES_PER_CALL = 1024


def ensure_on_server(address: str, name: str, revision: str = "", timeout_s: float = 3600,
                     on_status: Callable[[str], None] | None = None) -> str:
    """Shared-storage mode: ask the server to hydrate the model; returns the resolved revision."""
    channel = open_channel(address)
    try:
        req = pb.ModelDownloadRequest(model_name=name)
        if revision:
            req.revision = revision
        last = None
        for up in pb_grpc.ModelServiceStub(channel).EnsureModelDownloaded(req, timeout=timeout_s):
            last = up
            if on_status:
                on_status(f"{pb.ModelStatus.Name(up.status)}: {up.message}")
        if last is None or last.status != pb.DOWNLOADED:
            raise ModelNotFound(last.message if last is not None else f"no status for {name}")
        return last.resolved_revision
    except grpc.RpcError as exc:
        raise translate_rpc_error(exc, f"ensure {name}") from exc
    finally:
        channel.close()


#: (block size, digest of every block under the manifest's ``block_hash``) of a file
BlockHashesOf = Callable[[FileEntry], tuple[int, Sequence[bytes]]]


class HubCacheWriter:
    """Blob files of one model repo in an HF-layout cache.

    A file whose manifest ``sha256`` is not a digest of its bytes (``digest_verified`` is
    False: an object-store version id) is verified block by block with ``hashes_of``.
    """

    def __init__(self, cache_dir: Path, name: str, hashes_of: BlockHashesOf | None = None,
                 block_hash: str = hashing.LEGACY) -> None:
        self.repo = Path(cache_dir) / hub_folder(name)
        self.blobs = self.repo / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.hashes_of = hashes_of
        self.block_hash = block_hash

    def blob(self, f: FileEntry) -> Path:
        return self.blobs / f.sha256

    def partial(self, f: FileEntry) -> Path:
        return self.blobs / f"{f.sha256}.incomplete"

    def have(self, f: FileEntry) -> bool:
        try:
            return self.blob(f).stat().st_size == f.size
        except OSError:
            return False

    def resumable(self, f: FileEntry) -> int:
        try:
            n = self.partial(f).stat().st_size
        except OSError:
            return 0
        if n > f.size:
            self.partial(f).unlink()
            return 0
        return n

    def finish(self, f: FileEntry) -> None:
        """Verify the partial file and publish it as the blob (atomic rename)."""
        part = self.partial(f)
        if f.digest_verified:
            h = hashlib.sha256()
            with open(part, "rb") as fh:
                while chunk := fh.read(8 << 20):
                    h.update(chunk)
                os.fsync(fh.fileno())
            ok, what = h.hexdigest() == f.sha256, f"sha256 {h.hexdigest()}"
        else:
            ok, what = self._blocks_match(f, part), "a block hash differs"
        if not ok or part.stat().st_size != f.size:
            part.unlink()
            raise IntegrityError(f"{f.path}: downloaded bytes do not match the manifest ({what})")
        os.replace(part, self.blob(f))

    def _blocks_match(self, f: FileEntry, part: Path) -> bool:
        if self.hashes_of is None:
            raise IntegrityError(f"{f.path} has no published digest and no block hashes to verify it with")
        block_size, expected = self.hashes_of(f)
        if len(expected) != f.block_count(block_size):
            return False
        with open(part, "rb") as fh:
            for digest in expected:
                if not hashing.block_ok(self.block_hash, fh.read(block_size), digest):
                    return False
            os.fsync(fh.fileno())
        return True

    def publish(self, manifest: Manifest, ref: str) -> Path:
        """Create ``snapshots/<rev>`` (all links at once) and point ``refs/<ref>`` at it."""
        snaps = self.repo / "snapshots"
        final = snaps / manifest.revision
        snaps.mkdir(parents=True, exist_ok=True)
        target = final if final.is_dir() else snaps / f".{manifest.revision}.{os.getpid()}.tmp"
        for f in manifest.files:
            link = target / validate_relpath(f.path)
            link.parent.mkdir(parents=True, exist_ok=True)
            rel = os.path.relpath(self.blob(f), link.parent)
            tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
            tmp.unlink(missing_ok=True)
            os.symlink(rel, tmp)
            os.replace(tmp, link)
        if target != final:
            try:
                os.rename(target, final)
            except OSError:  # another downloader published it first
                shutil.rmtree(target, ignore_errors=True)
        if ref and not is_commit(ref):
            refs = self.repo / "refs" / ref
            refs.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(refs, manifest.revision)
        return final


def download_model(address: str, name: str, revision: str, cache_dir: Path,
                   progress: Callable[[int, int], Progress] | None = None, timeout_s: float = 3600) -> Path:
    """Stream ``name@revision`` into ``cache_dir`` (HF layout); returns the snapshot directory."""
    client = MxfsClient(address, timeout_s=60)
    try:
        manifest = client.get_manifest(name, revision)

        def hashes_of(f: FileEntry) -> tuple[int, Sequence[bytes]]:
            if f.block_hashes:
                return manifest.block_size, f.block_hashes
            out: list[bytes] = []
            n = f.block_count(manifest.block_size)
            while len(out) < n:  # the stream made the server read every block: these are known
                out += client.block_hashes(manifest.name, manifest.revision, f.path, len(out),
                                           min(HASHES_PER_CALL, n - len(out)))
            return manifest.block_size, out

        writer = HubCacheWriter(cache_dir, name, hashes_of, manifest.block_hash)
        todo = [f for f in manifest.files if not writer.have(f)]
        done_bytes = manifest.total_size - sum(f.size for f in todo)
        advance = progress(manifest.total_size, done_bytes) if progress else (lambda _n: None)
        fresh = []
        for f in todo:
            have = writer.resumable(f)
            if have:
                log.info("resuming %s at %d of %d bytes", f.path, have, f.size)
                advance(have)
                _resume(client, manifest, f, writer, have, advance, timeout_s)
            else:
                fresh.append(f)
        if fresh:
            _stream(address, manifest, fresh, writer, advance, timeout_s)
        return writer.publish(manifest, revision or DEFAULT_REVISION)
    finally:
        client.close()


def _resume(client: MxfsClient, manifest: Manifest, f: FileEntry, writer: HubCacheWriter, have: int,
            advance: Progress, timeout_s: float) -> None:
    with open(writer.partial(f), "ab") as out:
        for offset, data in client.iter_range(manifest.name, manifest.revision, f.path, have, f.size - have,
                                              timeout_s):
            if offset != out.tell():
                raise SourceError(f"server sent {f.path} at {offset}, expected {out.tell()}")
            out.write(data)
            advance(len(data))
    writer.finish(f)


def _stream(address: str, manifest: Manifest, files: list[FileEntry], writer: HubCacheWriter,
            advance: Progress, timeout_s: float) -> None:
    by_path = {f.path: f for f in files}
    req = pb.ModelFilesRequest(model_name=manifest.name, revision=manifest.revision,
                               file_selector=pb.ModelFileSelector(paths=list(by_path)))
    channel = open_channel(address)
    out = None
    current: FileEntry | None = None
    try:
        for chunk in pb_grpc.ModelServiceStub(channel).StreamModelFiles(req, timeout=timeout_s):
            f = by_path.get(chunk.relative_path)
            if f is None:
                raise SourceError(f"server streamed {chunk.relative_path!r}, which was not asked for")
            if f is not current:
                if out is not None:
                    raise SourceError(f"server moved to {f.path} before finishing {current.path}")
                out, current = open(writer.partial(f), "wb"), f  # noqa: SIM115 - spans chunks
            if chunk.offset != out.tell():
                raise SourceError(f"server sent {f.path} at {chunk.offset}, expected {out.tell()}")
            out.write(chunk.data)
            advance(len(chunk.data))
            if chunk.is_last_chunk:
                out.close()
                out, current = None, None
                writer.finish(f)
                del by_path[f.path]
    except grpc.RpcError as exc:
        raise translate_rpc_error(exc, f"stream {manifest.name}") from exc
    finally:
        if out is not None:
            out.close()  # keep the .incomplete file: the next run resumes it
        channel.close()
    if by_path:
        raise SourceError(f"stream ended before {', '.join(sorted(by_path))}")
