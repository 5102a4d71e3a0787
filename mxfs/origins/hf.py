"""Hugging Face Hub origin: commit-pinned metadata via ``huggingface_hub``, HTTP range reads.

Honours ``HF_ENDPOINT`` (a mirror or a local test endpoint) and ``HF_TOKEN``. The token
is sent only to the Hub; it never appears in manifests or crosses mxfs' own wire.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

from mxfs import envs
from mxfs.errors import InvalidModelName, ManifestError, ModelNotFound, OriginDenied, SourceError
from mxfs.manifest.names import DEFAULT_REVISION, is_commit, validate_name, validate_relpath
from mxfs.manifest.validate import check_sha1_hex, check_sha256_hex, check_size
from mxfs.origins.remote import OriginUnavailable, RangeBody, RemoteFile, Snapshot, check_range

DEFAULT_ENDPOINT = "https://huggingface.co"
_SNAPSHOT_CACHE = 256


class HuggingFaceSource:
    """Models ``org/name`` on a Hugging Face Hub (or an HF-compatible endpoint)."""

    provider = "hf"

    def __init__(self, endpoint: str | None = None, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.endpoint = (endpoint or envs.HF_ENDPOINT.get() or DEFAULT_ENDPOINT).rstrip("/")
        self._token = token if token is not None else envs.HF_TOKEN.get()
        self.timeout_s = timeout_s
        self.label = f"hf:{self.endpoint}"
        self._lock = threading.Lock()
        self._pinned: dict[tuple[str, str], Snapshot] = {}

    def has(self, name: str) -> bool:
        validate_name(name)
        return True  # unbounded: resolve() says whether it exists

    def list_models(self) -> list[str]:
        return []

    def snapshot(self, name: str, revision: str) -> Snapshot:
        validate_name(name)
        revision = revision or DEFAULT_REVISION
        with self._lock:
            hit = self._pinned.get((name, revision))
        if hit is not None:
            return hit
        info = self._model_info(name, revision)
        commit = getattr(info, "sha", None) or ""
        if not is_commit(commit):
            raise SourceError(f"{self.label} returned no commit for {name}@{revision}")
        files = tuple(_remote_file(s) for s in (info.siblings or []))
        snap = Snapshot(name, commit, files, self.label)
        with self._lock:
            if len(self._pinned) >= _SNAPSHOT_CACHE:
                self._pinned.clear()
            self._pinned[(name, commit)] = snap
        return snap

    def _model_info(self, name: str, revision: str) -> Any:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        api = HfApi(endpoint=self.endpoint, token=self._token or False)
        try:
            return api.model_info(name, revision=revision, files_metadata=True, timeout=self.timeout_s)
        except GatedRepoError as exc:
            raise OriginDenied(f"{name} is a gated repository at {self.endpoint}: set HF_TOKEN to a token "
                               "that was granted access") from exc
        except RepositoryNotFoundError as exc:
            hint = "" if self._token else " (private repositories need HF_TOKEN)"
            raise ModelNotFound(f"model {name} not found at {self.endpoint}{hint}") from exc
        except RevisionNotFoundError as exc:
            raise ModelNotFound(f"revision {revision!r} of {name} not found at {self.endpoint}") from exc
        except HfHubHTTPError as exc:
            raise _http_error(exc, f"{name}@{revision}", self.endpoint) from exc
        except OSError as exc:  # connection refused, DNS, timeouts (httpx errors are OSErrors here)
            raise OriginUnavailable(f"cannot reach {self.endpoint}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("httpx"):
                raise OriginUnavailable(f"cannot reach {self.endpoint}: {exc}") from exc
            raise

    def url(self, snapshot: Snapshot, path: str) -> str:
        return f"{self.endpoint}/{snapshot.name}/resolve/{snapshot.revision}/{quote(validate_relpath(path))}"

    def read(self, snapshot: Snapshot, path: str, offset: int, length: int) -> bytes:
        check_range(snapshot, path, offset, length)
        if length == 0:
            return b""
        buf = bytearray(length)
        with self.open_range(snapshot, path, offset, length) as body:
            body.fill(memoryview(buf))
        return bytes(buf)

    def open_range(self, snapshot: Snapshot, path: str, offset: int, length: int) -> RangeBody:
        """The bytes ``[offset, offset+length)`` of ``path`` as a body whose chunks are copied
        once, into the caller's buffers (the server's block buffers), not gathered first."""
        check_range(snapshot, path, offset, length)
        import httpx2
        from huggingface_hub.utils import build_hf_headers, get_session

        headers = build_hf_headers(token=self._token or False)
        headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        where = f"{snapshot.name}/{path}@{offset}"
        stream = get_session().stream("GET", self.url(snapshot, path), headers=headers,
                                      follow_redirects=True, timeout=self.timeout_s)
        try:
            response = stream.__enter__()
            _check_response(response, snapshot, where, self.endpoint, offset, length)
        except httpx2.TransportError as exc:
            stream.__exit__(None, None, None)
            raise OriginUnavailable(f"{self.endpoint} failed while sending {where}: {exc}") from exc
        except BaseException:
            stream.__exit__(None, None, None)
            raise
        return _StreamBody(stream, response, length, f"{where} from {self.endpoint}")


class _StreamBody:
    """A :class:`RangeBody` over a streaming httpx response of ``length`` bytes: each chunk
    as it arrives goes into the caller's buffer; a body longer than asked is refused as soon
    as a chunk crosses the end (nothing past it is read), one shorter is ``OriginUnavailable``."""

    def __init__(self, stream: Any, response: Any, length: int, what: str) -> None:
        self._stream = stream
        self._chunks = response.iter_bytes()
        self._length = length
        self._received = 0
        self._left = memoryview(b"")
        self._what = what

    def fill(self, view: memoryview) -> None:
        import httpx2

        got, want = 0, len(view)
        try:
            while got < want:
                if not self._left:
                    chunk = next(self._chunks, None)
                    if chunk is None:
                        raise OriginUnavailable(f"{self._what} ended after {self._received} of {self._length} bytes")
                    self._received += len(chunk)
                    if self._received > self._length:
                        raise SourceError(f"{self._what}: more than the {self._length} bytes asked for")
                    self._left = memoryview(chunk)
                n = min(want - got, len(self._left))
                view[got:got + n] = self._left[:n]
                self._left = self._left[n:]
                got += n
        except httpx2.TransportError as exc:
            raise OriginUnavailable(f"{self._what} failed after {self._received} bytes: {exc}") from exc

    def close(self) -> None:
        self._left = memoryview(b"")
        self._stream.__exit__(None, None, None)

    def __enter__(self) -> _StreamBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote_file(sibling: Any) -> RemoteFile:
    """One Hub sibling, every value checked before it can name a file or size a read."""
    try:
        path = validate_relpath(str(sibling.rfilename))
    except InvalidModelName as exc:
        raise ManifestError(f"the Hub listed an unsafe file name: {exc}") from None
    lfs = sibling.lfs
    if sibling.size is None:
        raise SourceError(f"the Hub listed {path} without a size (files_metadata missing)")
    size = check_size(int(sibling.size), f"the Hub's listing of {path}")
    if lfs is not None:
        sha = lfs.sha256 if isinstance(lfs.sha256, str) else None
        if sha is not None:
            check_sha256_hex(sha, f"the Hub's LFS digest of {path}")
        return RemoteFile(path, size, sha256=sha, etag=sha or "")
    blob_id = sibling.blob_id
    if blob_id is not None:
        check_sha1_hex(blob_id, f"the Hub's blob id of {path}")
    return RemoteFile(path, size, git_sha1=blob_id, etag=blob_id or "")


def _http_error(exc: Any, what: str, endpoint: str) -> Exception:
    status = getattr(getattr(exc, "response", None), "status_code", 0)
    if status in (401, 403):
        return OriginDenied(f"{endpoint} refused {what} (HTTP {status}): check HF_TOKEN")
    if status == 404:
        return ModelNotFound(f"{what} not found at {endpoint}")
    if status >= 500 or status == 429:
        return OriginUnavailable(f"{endpoint} failed for {what} (HTTP {status})")
    return SourceError(f"{endpoint} answered HTTP {status} for {what}: {exc}")


def _check_response(r: Any, snap: Snapshot, where: str, endpoint: str, offset: int, length: int) -> None:
    status = r.status_code
    if status in (401, 403):
        raise OriginDenied(f"{endpoint} refused {where} (HTTP {status}): check HF_TOKEN")
    if status == 404:
        raise ModelNotFound(f"{where} not found at {endpoint}")
    if status == 200 and offset == 0 and int(r.headers.get("content-length", -1)) == length:
        return  # a whole-file answer to a whole-file range is fine
    if status != 206:
        raise (OriginUnavailable if status >= 500 else SourceError)(
            f"{endpoint} answered HTTP {status} to a range request for {where}"
        )
    commit = r.headers.get("x-repo-commit")
    if commit and commit != snap.revision:
        raise SourceError(f"{endpoint} served commit {commit} for {where}, pinned to {snap.revision}")
    expected = f"bytes {offset}-{offset + length - 1}/"
    if not r.headers.get("content-range", "").startswith(expected):
        raise SourceError(f"{endpoint} sent range {r.headers.get('content-range')!r} for {where}")
