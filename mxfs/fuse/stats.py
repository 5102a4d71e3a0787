"""Prometheus accounting of what the FUSE layer answered itself (per file and mode).

A read in passthrough mode never reaches the daemon, so ``mxfs_node_fuse_reads_total`` of
a passthrough file stays 0 while its bytes are read: that is how tests and operators see
the kernel carrying the data.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

#: how an open file's reads are answered
CACHED = "cached"  # the daemon reads (and verifies) blocks through the fetch chain
BLOB = "blob"  # the daemon's reply is a kernel copy from the verified cache blob
PASSTHROUGH = "passthrough"  # the kernel reads the cache blob itself
MODES = (CACHED, BLOB, PASSTHROUGH)


class FuseStats:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.reads = Counter("mxfs_node_fuse_reads", "READ requests answered by the daemon",
                             ["file", "mode"], registry=r)
        self.read_bytes = Counter("mxfs_node_fuse_read_bytes", "bytes answered to READ requests",
                                  ["mode"], registry=r)
        self.from_blob_bytes = Counter("mxfs_node_fuse_blob_read_bytes",
                                       "bytes answered from a cache blob without passing through Python "
                                       "(copied by the kernel), any mode", registry=r)
        self.opens = Counter("mxfs_node_fuse_opens", "file opens by the mode chosen", ["mode"], registry=r)
        self.verified = Counter("mxfs_node_fuse_verified_files",
                                "cache blobs fully checked before the kernel may read them", registry=r)
        self.sealed = Counter("mxfs_node_fuse_sealed_files",
                              "complete cache blobs opened on their seal (unchanged since recorded), unread",
                              registry=r)

    def read(self, file: str, mode: str, nbytes: int, from_blob: bool = False) -> None:
        self.reads.labels(file, mode).inc()
        self.read_bytes.labels(mode).inc(nbytes)
        if from_blob:
            self.from_blob_bytes.inc(nbytes)
