"""Stand-in HTTP origins for hostile-answer tests: a handler class served on 127.0.0.1 (plain
or TLS) in a thread, and an ``S3Store`` whose client talks to it with dummy credentials."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mxfs.origins.objstore import S3Store


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``handler`` until the block ends; yields its ``http(s)://127.0.0.1:PORT`` endpoint."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def flood(handler: BaseHTTPRequestHandler, counter: str, mib: int) -> None:
    """Write ``mib`` MiB of zeros as the body (far more than was asked), adding each MiB to
    the handler class's ``counter`` as it leaves, so a test sees how much went out; stops
    quietly when the client hangs up."""
    chunk = b"\0" * (1 << 20)
    try:
        for _ in range(mib):
            handler.wfile.write(chunk)
            setattr(type(handler), counter, getattr(type(handler), counter) + len(chunk))
    except OSError:
        pass


def stub_s3_store(endpoint: str, verify: str | bool | None = None, retries: int | None = 1) -> S3Store:
    """An ``S3Store`` of bucket ``bucket`` at ``endpoint`` (SigV4, dummy keys; ``retries``
    None keeps botocore's default retries)."""
    import boto3
    from botocore.config import Config

    config = Config(signature_version="s3v4", **({"retries": {"max_attempts": retries}} if retries else {}))
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                          region_name="us-east-1", verify=verify, config=config)
    return S3Store("bucket", client=client)
