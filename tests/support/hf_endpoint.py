"""A local Hugging Face-compatible endpoint on 127.0.0.1 (``HF_ENDPOINT``) for origin tests.

Serves the subset of the Hub's HTTP API that ``huggingface_hub`` and mxfs use:
``/api/models/<repo>[/revision/<rev>]`` (siblings with sizes, blob ids and LFS sha256),
``/<repo>/resolve/<rev>/<path>`` (GET/HEAD, Range, ETag, ``X-Repo-Commit``; LFS files are
redirected to a content-addressed ``/cdn/<sha256>`` URL, like the Hub's CDN), the Hub's
``X-Error-Code`` values, tokens for gated/private repos, byte counters, and a fault switch
that cuts a response mid-file.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_MIN_BYTES = 10 * 1024


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> path -> bytes
    token: str | None = None  # required bearer token (gated repo) when set
    gated: bool = False


def _is_lfs(path: str, data: bytes) -> bool:
    return len(data) >= LFS_MIN_BYTES or path.endswith(".safetensors")


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class HubEndpoint:
    """Start with ``start()``; ``url`` is what ``HF_ENDPOINT`` should be."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.bytes_sent: Counter[str] = Counter()  # path -> body bytes sent by resolve/cdn
        self.requests: Counter[str] = Counter()
        self.cut_after: dict[str, int] = {}  # path -> bytes to send before dropping the connection
        self.sibling_patch: dict[tuple[str, str], dict] = {}  # (repo, path) -> fields a hostile Hub lies about
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- content ---------------------------------------------------------------------------

    def add_commit(self, name: str, files: dict[str, bytes], branch: str = "main",
                   token: str | None = None, gated: bool = False) -> str:
        """Add a commit of ``files`` to repo ``name`` and point ``branch`` at it; returns the commit."""
        h = hashlib.sha1(name.encode())
        for path in sorted(files):
            h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        repo = self.repos.setdefault(name, Repo())
        h.update(str(len(repo.commits)).encode())
        commit = h.hexdigest()
        repo.commits[commit] = dict(files)
        repo.branches[branch] = commit
        repo.token, repo.gated = token, gated
        return commit

    def add_dir(self, name: str, directory: Path, branch: str = "main", **kw) -> str:
        files = {p.relative_to(directory).as_posix(): p.read_bytes()
                 for p in sorted(directory.rglob("*")) if p.is_file()}
        return self.add_commit(name, files, branch, **kw)

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_sent.clear()
            self.requests.clear()

    # -- server ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubEndpoint:
        hub = self

        class Handler(_Handler):
            endpoint = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="hf-endpoint", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


_API = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/(.+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([0-9a-f]{64})/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    endpoint: HubEndpoint
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _error(self, status: int, code: str, message: str = "") -> None:
        body = json.dumps({"error": message or code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message or code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, name: str, revision: str) -> tuple[Repo, str] | None:
        repo = self.endpoint.repos.get(name)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            if repo.gated:
                self._error(403, "GatedRepo", "Access to this model is restricted")
            else:
                self._error(401, "RepoNotFound", "Repository not found")
            return None
        commit = revision if revision in repo.commits else repo.branches.get(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        with self.endpoint._lock:
            self.endpoint.requests[path] += 1
        if m := _API.match(path):
            return self._info(unquote(m.group(1)), unquote(m.group(2) or "main"))
        if m := _RESOLVE.match(path):
            return self._resolve(unquote(m.group(1)), unquote(m.group(2)), unquote(m.group(3)))
        if m := _CDN.match(path):
            return self._cdn(m.group(1), unquote(m.group(2)), m.group(3), unquote(m.group(4)))
        self._error(404, "EntryNotFound", "no such route")

    def _info(self, name: str, revision: str) -> None:
        found = self._repo(name, revision)
        if found is None:
            return
        repo, commit = found
        siblings = []
        for rel, data in sorted(repo.commits[commit].items()):
            sib = {"rfilename": rel, "size": len(data), "blobId": _git_blob_id(data)}
            if _is_lfs(rel, data):
                sib["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            for key, value in self.endpoint.sibling_patch.get((name, rel), {}).items():
                sib[key] = {**sib.get(key, {}), **value} if isinstance(value, dict) else value
            siblings.append(sib)
        doc = {"_id": commit[:24], "id": name, "modelId": name, "sha": commit, "private": bool(repo.token),
               "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
               "tags": [], "siblings": siblings, "lastModified": "2025-01-01T00:00:00.000Z"}
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _resolve(self, name: str, revision: str, rel: str) -> None:
        found = self._repo(name, revision)
        if found is None:
            return
        repo, commit = found
        data = repo.commits[commit].get(rel)
        if data is None:
            return self._error(404, "EntryNotFound", f"{rel} does not exist at {revision}")
        if _is_lfs(rel, data):
            sha = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"/cdn/{sha}/{name}/{commit}/{rel}")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{_git_blob_id(data)}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_bytes(rel, data, commit, _git_blob_id(data))

    def _cdn(self, sha: str, name: str, commit: str, rel: str) -> None:
        repo = self.endpoint.repos.get(name)
        data = repo.commits.get(commit, {}).get(rel) if repo else None
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            return self._error(404, "EntryNotFound", "no such object")
        self._send_bytes(rel, data, commit, sha)

    def _send_bytes(self, rel: str, data: bytes, commit: str, etag: str) -> None:
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d+)-(\d*)$", rng)
            if not m or int(m.group(1)) >= len(data):
                return self._error(416, "RangeNotSatisfiable", rng)
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            status = 206
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = self.endpoint.cut_after.get(rel)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            with self.endpoint._lock:
                self.endpoint.bytes_sent[rel] += min(cut, len(body))
            return
        self.wfile.write(body)
        with self.endpoint._lock:
            self.endpoint.bytes_sent[rel] += len(body)
