"""Client-side model download without shared storage, into a Hugging Face-layout cache."""

from mxfs.download.hfcache import download_model, ensure_on_server

__all__ = ["download_model", "ensure_on_server"]
