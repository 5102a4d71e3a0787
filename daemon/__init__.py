"""mxfsd, the node daemon: FUSE mount, block cache, fetch chain, control socket."""
