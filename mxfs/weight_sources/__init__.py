"""Peer-to-peer weight transfer: a registry of running sources and NIXL pulls between workers."""
