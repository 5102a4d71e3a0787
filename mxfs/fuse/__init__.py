"""The FUSE layer: a pure in-memory tree, transport-agnostic operations, and a kernel session."""
