"""The FUSE layer: a pure in-memory tree and thin pyfuse3 operations over it."""
