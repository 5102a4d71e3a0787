"""NodeControl gRPC service on a unix socket; handlers hop into the daemon's trio loop."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import trio

from mxfs.errors import InvalidModelName, ModelNotFound, MxfsError
from mxfs.manifest.names import DEFAULT_REVISION, ModelRef, validate_name, validate_revision
from mxfs.rpc import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25


class NodeControlServicer(node_pb2_grpc.NodeControlServicer):
    """``start_prefetch``, ``status`` and ``resolve`` are async callables run in the trio loop."""

    def __init__(self, token: trio.lowlevel.TrioToken, start_prefetch: Callable, status: Callable,
                 resolve: Callable | None = None) -> None:
        self.token = token
        self.start_prefetch = start_prefetch
        self.status = status
        self.resolve = resolve

    def _in_trio(self, fn: Callable, *args):
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def Prefetch(
        self, request: node_pb2.PrefetchRequest, context: grpc.ServicerContext
    ) -> Iterator[node_pb2.PrefetchProgress]:
        try:
            ref = ModelRef(validate_name(request.name), validate_revision(request.revision or DEFAULT_REVISION))
            job = self._in_trio(self.start_prefetch, ref, request.page_cache)
        except (InvalidModelName, ModelNotFound) as exc:
            context.abort(grpc.StatusCode.NOT_FOUND if isinstance(exc, ModelNotFound)
                          else grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except MxfsError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        while True:
            snap = job.snapshot()
            yield node_pb2.PrefetchProgress(**snap)
            if snap["finished"] or not context.is_active():
                return
            time.sleep(PROGRESS_INTERVAL_S)

    def Status(self, request: node_pb2.NodeStatusRequest, context: grpc.ServicerContext) -> node_pb2.NodeStatus:
        return self._in_trio(self.status)

    def Resolve(self, request: node_pb2.ResolveRequest, context: grpc.ServicerContext) -> node_pb2.ResolveReply:
        if self.resolve is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this daemon does not resolve on request")
        try:
            ref = ModelRef(validate_name(request.name), validate_revision(request.revision or DEFAULT_REVISION))
            revision = self._in_trio(self.resolve, ref)
        except InvalidModelName as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ModelNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except MxfsError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return node_pb2.ResolveReply(revision=revision)


def serve(socket_path: Path, servicer: NodeControlServicer) -> grpc.Server:
    """Start the control server on ``unix://socket_path`` (replacing a stale socket).

    Only root reaches it: the socket is bound inside a fresh 0700 directory, made 0600
    there, and only then renamed into place, so no other user can connect in between.
    """
    socket_path.unlink(missing_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".c", dir=socket_path.parent))  # short: AF_UNIX paths are <108
    try:
        bound = private / "s"
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="mxfs-ctl"))
        node_pb2_grpc.add_NodeControlServicer_to_server(servicer, server)
        if server.add_insecure_port(f"unix://{bound}") == 0:
            raise OSError(f"cannot listen on {socket_path}")
        server.start()
        bound.chmod(0o600)
        os.replace(bound, socket_path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return server
