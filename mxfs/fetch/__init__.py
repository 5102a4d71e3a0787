"""The fetch chain: local cache -> peers -> server -> origin, every block verified."""
