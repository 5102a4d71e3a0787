"""Registries' storage: one small key/value + hash interface, embedded (sqlite) or Redis."""

from mxfs.registry.store import Store, open_store

__all__ = ["Store", "open_store"]
