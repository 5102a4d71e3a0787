"""The mxfs server: resolves models from origins, serves manifests and byte ranges."""
