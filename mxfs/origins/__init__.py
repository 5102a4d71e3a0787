"""Origins: where models come from (local directories; remote providers plug in here)."""

from mxfs.origins.base import Origin
from mxfs.origins.local import LocalOrigin

__all__ = ["LocalOrigin", "Origin"]
