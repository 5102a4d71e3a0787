"""A FUSE transport that speaks the kernel protocol over /dev/fuse (no libfuse)."""
