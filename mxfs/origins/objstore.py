"""Object-store origins: S3 (and S3-compatible), GCS and Azure Blob, by ranged GETs.

``<prefix>/<org>/<name>/...`` under a bucket is a model (or one prefix is bound to one
model name). A snapshot is the listing's (path, size, ETag) set; its 40-hex revision is a
hash of that listing, and every ranged read is pinned to the ETag it saw, so a model that
changes at the origin mid-read fails clearly instead of mixing versions. The SDKs read
their own credentials (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_*``); nothing
about them leaves this process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from mxfs import envs
from mxfs.errors import InvalidModelName, ModelNotFound, OriginDenied, SourceError
from mxfs.manifest.names import DEFAULT_REVISION, is_commit, validate_name, validate_relpath
from mxfs.manifest.validate import check_size
from mxfs.origins import presigned
from mxfs.origins.presigned import PresignedReader
from mxfs.origins.remote import (
    BytesBody,
    OriginUnavailable,
    RangeBody,
    RemoteFile,
    Snapshot,
    check_range,
    listing_revision,
)

log = logging.getLogger(__name__)


class ObjectStore(Protocol):
    """The four calls an origin needs from a bucket (thread-safe)."""

    scheme: str
    bucket: str

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        """(key, size, etag) of every object under ``prefix``."""
        ...

    def dirs(self, prefix: str) -> list[str]:
        """Immediate 'sub-directories' (common prefixes) under ``prefix``."""
        ...

    def any(self, prefix: str) -> bool: ...

    def get_range(self, key: str, offset: int, length: int, etag: str) -> bytes: ...


class StreamsRanges(Protocol):
    """A store that can hand a range to the caller's buffers without a copy (optional)."""

    def open_range(self, key: str, offset: int, length: int, etag: str) -> RangeBody:
        """The ``length`` bytes of ``key`` at ``offset`` as a body; raises as ``get_range``."""
        ...


# -- S3 -------------------------------------------------------------------------------------

_S3_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden",
              "ExpiredToken", "InvalidToken", "AllAccessDisabled"}


class S3Store:
    """S3 or an S3-compatible server (``AWS_ENDPOINT_URL``), through boto3."""

    scheme = "s3"

    def __init__(self, bucket: str, client: Any = None, max_connections: int = 64) -> None:
        self.bucket = bucket
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", config=Config(
                max_pool_connections=max_connections, retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10, read_timeout=60, signature_version="s3v4"))
        self._s3 = client
        self.endpoint = client.meta.endpoint_url
        # block reads: botocore signs, the body goes straight into the caller's buffer
        self._presigned = PresignedReader(client, bucket) if presigned.usable(client, self.endpoint) else None

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code == "NoSuchBucket":
                raise ModelNotFound(f"bucket s3://{self.bucket} does not exist at {self.endpoint}") from exc
            if code in _S3_DENIED:
                raise OriginDenied(f"{self.endpoint} refused {what} ({code}): check the AWS credentials "
                                   "of this process") from exc
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ModelNotFound(f"{what} not found at {self.endpoint}") from exc
            if code in ("PreconditionFailed", "412"):
                raise ModelNotFound(f"{what} changed at the origin since the model was resolved") from exc
            if code.startswith("5") or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
                raise OriginUnavailable(f"{self.endpoint} failed {what}: {code}") from exc
            raise SourceError(f"{self.endpoint} refused {what}: {code} {err.get('Message', '')}") from exc
        except NoCredentialsError as exc:
            raise OriginDenied(f"no AWS credentials for s3://{self.bucket} in this process") from exc
        except BotoCoreError as exc:  # connection refused, timeouts, truncated bodies
            raise OriginUnavailable(f"{self.endpoint} failed {what}: {exc}") from exc

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        out = []
        with self._errors(f"listing s3://{self.bucket}/{prefix}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                out += [(o["Key"], int(o["Size"]), o.get("ETag", "").strip('"')) for o in page.get("Contents", [])]
        return out

    def dirs(self, prefix: str) -> list[str]:
        # derived from a plain listing: some S3-compatible servers ignore Delimiter
        return sorted({prefix + key[len(prefix):].split("/", 1)[0] + "/"
                       for key, _, _ in self.list(prefix) if "/" in key[len(prefix):]})

    def any(self, prefix: str) -> bool:
        # first page only (no MaxKeys: some S3-compatible servers fail on truncated listings)
        with self._errors(f"listing s3://{self.bucket}/{prefix}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                return bool(page.get("Contents"))
        return False

    def get_range(self, key: str, offset: int, length: int, etag: str) -> bytes:
        what = f"s3://{self.bucket}/{key}@{offset}+{length}"
        with self._errors(what):
            r = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")
            got = r.get("ETag", "").strip('"')
            if etag and got and got != etag:
                raise ModelNotFound(f"{what} changed at the origin (ETag {got}, pinned {etag})")
            body = r["Body"]
            try:  # an origin that ignores Range may send a whole object: read one byte past the ask
                status = r.get("ResponseMetadata", {}).get("HTTPStatusCode", 206)
                if status != 206 and not (status == 200 and offset == 0 and r.get("ContentLength") == length):
                    raise SourceError(f"{self.endpoint} ignored the range of {what} (HTTP {status})")
                data = body.read(length + 1)
            finally:
                body.close()
        if len(data) > length:
            raise SourceError(f"{self.endpoint} sent more than the range of {what}")
        if len(data) != length:
            raise OriginUnavailable(f"{self.endpoint} sent {len(data)} of {length} bytes of {what}")
        return data

    @property
    def presigned_reads(self) -> bool:
        """Whether ``open_range`` reads by presigned GET (else through botocore's ``get_object``)."""
        return self._presigned is not None

    def open_range(self, key: str, offset: int, length: int, etag: str) -> RangeBody:
        """``get_range`` as a body read straight into the caller's buffers (a presigned GET: one
        copy, no botocore call per read); what that path does not handle (a refusal, a
        redirect) goes through ``get_range``, with its errors."""
        what = f"s3://{self.bucket}/{key}@{offset}+{length}"
        fast = self._presigned
        if fast is not None:
            try:
                with self._errors(what):  # signing
                    return fast.open(key, offset, length, etag)
            except presigned.NotPlain as exc:
                refused = exc
        body = BytesBody(self.get_range(key, offset, length, etag), length, what)
        if fast is not None and refused.status < 500 and refused.status != 429:
            # botocore managed what the plain GET could not (a redirect, say): stay with it
            log.info("reading s3://%s through botocore from now on: a presigned GET got %s", self.bucket, refused)
            self._presigned = None
        return body


# -- GCS and Azure (same contract; SDKs imported only when such a URI is used) ----------------

class GCSStore:
    """Google Cloud Storage through ``google-cloud-storage`` (ETag = object generation)."""

    scheme = "gs"

    def __init__(self, bucket: str) -> None:
        from google.cloud import storage

        self.bucket = bucket
        self._bucket = storage.Client().bucket(bucket)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from google.api_core import exceptions as gexc

        try:
            yield
        except gexc.NotFound as exc:
            raise ModelNotFound(f"{what} not found (bucket gs://{self.bucket})") from exc
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            raise OriginDenied(f"GCS refused {what}: check GOOGLE_APPLICATION_CREDENTIALS") from exc
        except gexc.PreconditionFailed as exc:
            raise ModelNotFound(f"{what} changed at the origin since the model was resolved") from exc
        except gexc.GoogleAPIError as exc:
            raise OriginUnavailable(f"GCS failed {what}: {exc}") from exc

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        with self._errors(f"listing gs://{self.bucket}/{prefix}"):
            return [(b.name, int(b.size), str(b.generation)) for b in self._bucket.list_blobs(prefix=prefix)]

    def dirs(self, prefix: str) -> list[str]:
        with self._errors(f"listing gs://{self.bucket}/{prefix}"):
            it = self._bucket.list_blobs(prefix=prefix, delimiter="/")
            for _ in it:
                pass
            return sorted(it.prefixes)

    def any(self, prefix: str) -> bool:
        with self._errors(f"listing gs://{self.bucket}/{prefix}"):
            return any(True for _ in self._bucket.list_blobs(prefix=prefix, max_results=1))

    def get_range(self, key: str, offset: int, length: int, etag: str) -> bytes:
        what = f"gs://{self.bucket}/{key}@{offset}+{length}"
        with self._errors(what):
            blob = self._bucket.blob(key, generation=int(etag) if etag else None)
            data = blob.download_as_bytes(start=offset, end=offset + length - 1)
        if len(data) != length:
            raise OriginUnavailable(f"GCS sent {len(data)} of {length} bytes of {what}")
        return data


class AzureStore:
    """Azure Blob Storage through ``azure-storage-blob`` (``az://container/prefix``)."""

    scheme = "az"

    def __init__(self, container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.bucket = container
        conn = envs.AZURE_STORAGE_CONNECTION_STRING.get()
        if conn:
            service = BlobServiceClient.from_connection_string(conn)
        else:
            account = envs.AZURE_STORAGE_ACCOUNT_NAME.get()
            if not account:
                raise InvalidModelName("az:// origins need AZURE_STORAGE_ACCOUNT_NAME or "
                                       "AZURE_STORAGE_CONNECTION_STRING")
            from azure.identity import DefaultAzureCredential

            service = BlobServiceClient(f"https://{account}.blob.core.windows.net", DefaultAzureCredential())
        self._container = service.get_container_client(container)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from azure.core import exceptions as aexc

        try:
            yield
        except aexc.ResourceNotFoundError as exc:
            raise ModelNotFound(f"{what} not found (container az://{self.bucket})") from exc
        except aexc.ClientAuthenticationError as exc:
            raise OriginDenied(f"Azure refused {what}: check the AZURE_* credentials") from exc
        except aexc.ResourceModifiedError as exc:
            raise ModelNotFound(f"{what} changed at the origin since the model was resolved") from exc
        except aexc.AzureError as exc:
            raise OriginUnavailable(f"Azure failed {what}: {exc}") from exc

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        with self._errors(f"listing az://{self.bucket}/{prefix}"):
            return [(b.name, int(b.size), b.etag.strip('"'))
                    for b in self._container.list_blobs(name_starts_with=prefix)]

    def dirs(self, prefix: str) -> list[str]:
        with self._errors(f"listing az://{self.bucket}/{prefix}"):
            return [p.name for p in self._container.walk_blobs(name_starts_with=prefix, delimiter="/")
                    if p.name.endswith("/")]

    def any(self, prefix: str) -> bool:
        with self._errors(f"listing az://{self.bucket}/{prefix}"):
            return any(True for _ in self._container.list_blobs(name_starts_with=prefix, results_per_page=1))

    def get_range(self, key: str, offset: int, length: int, etag: str) -> bytes:
        from azure.core import MatchConditions

        what = f"az://{self.bucket}/{key}@{offset}+{length}"
        with self._errors(what):
            kw = {"etag": f'"{etag}"', "match_condition": MatchConditions.IfNotModified} if etag else {}
            data = self._container.download_blob(key, offset=offset, length=length, **kw).readall()
        if len(data) != length:
            raise OriginUnavailable(f"Azure sent {len(data)} of {length} bytes of {what}")
        return data


STORES: dict[str, Callable[[str], ObjectStore]] = {"s3": S3Store, "gs": GCSStore, "az": AzureStore}


# -- the origin -------------------------------------------------------------------------------

class ObjectStoreSource:
    """Models under a bucket prefix (``<prefix>/<org>/<name>/``), or one prefix bound to one name."""

    def __init__(self, store: ObjectStore, prefix: str = "", name: str | None = None) -> None:
        self.store = store
        self.provider = store.scheme
        self.prefix = prefix.strip("/")
        self.single = validate_name(name) if name else None
        self.label = f"{store.scheme}://{store.bucket}/{self.prefix}".rstrip("/")
        self._lock = threading.Lock()
        self._pinned: dict[tuple[str, str], Snapshot] = {}

    def model_prefix(self, name: str) -> str:
        validate_name(name)
        if self.single is not None:
            if name != self.single:
                raise ModelNotFound(f"{self.label} holds only {self.single}, not {name}")
            return f"{self.prefix}/" if self.prefix else ""
        return f"{self.prefix}/{name}/" if self.prefix else f"{name}/"

    def has(self, name: str) -> bool:
        if self.single is not None:
            return validate_name(name) == self.single
        return self.store.any(self.model_prefix(name))

    def list_models(self) -> list[str]:
        if self.single is not None:
            return [self.single]
        base = f"{self.prefix}/" if self.prefix else ""
        names = []
        for org in self.store.dirs(base):
            for model in self.store.dirs(org):
                name = model[len(base):].strip("/")
                try:
                    names.append(validate_name(name))
                except InvalidModelName:
                    log.debug("skipping %s: not an org/name model folder", model)
        return names

    def snapshot(self, name: str, revision: str) -> Snapshot:
        mp = self.model_prefix(name)
        revision = revision or DEFAULT_REVISION
        with self._lock:
            hit = self._pinned.get((name, revision))
        if hit is not None:
            return hit
        files = []
        for key, size, etag in self.store.list(mp):
            rel = key[len(mp):]
            if not rel or rel.endswith("/"):
                continue  # directory markers
            try:
                validate_relpath(rel)
            except InvalidModelName:
                log.warning("skipping object %s: not a valid file path in a model", key)
                continue
            files.append(RemoteFile(rel, check_size(size, f"the listing of {key}"), etag=etag))
        if not files:
            where = f"{self.store.scheme}://{self.store.bucket}/{mp}"
            raise ModelNotFound(f"model {name} not found: no objects under {where}")
        current = listing_revision(files)
        if revision != DEFAULT_REVISION and revision != current:
            if is_commit(revision):
                raise ModelNotFound(f"revision {revision} of {name} is no longer at {self.label} "
                                    f"(it now holds {current})")
            raise ModelNotFound(f"revision {revision!r} of {name}: object stores have no branches or tags "
                                "(use main or a resolved 40-hex revision)")
        snap = Snapshot(name, current, tuple(sorted(files, key=lambda f: f.path)), self.label)
        with self._lock:
            self._pinned[(name, current)] = snap
        return snap

    def read(self, snapshot: Snapshot, path: str, offset: int, length: int) -> bytes:
        f = check_range(snapshot, path, offset, length)
        if length == 0:
            return b""
        return self.store.get_range(self.model_prefix(snapshot.name) + f.path, offset, length, f.etag)

    def open_range(self, snapshot: Snapshot, path: str, offset: int, length: int) -> RangeBody:
        """``read`` as a body taken straight into the caller's buffers where the store can."""
        f = check_range(snapshot, path, offset, length)
        key = self.model_prefix(snapshot.name) + f.path
        opener = getattr(self.store, "open_range", None)
        if opener is None or not length:
            return BytesBody(self.store.get_range(key, offset, length, f.etag) if length else b"", length, key)
        return opener(key, offset, length, f.etag)
