"""Which model a volume asks for, read from its CSI volume context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mxfs.manifest.names import validate_name, validate_revision
from mxfs_csi.status import invalid_argument

# Volume context keys (set in a PV's csi.volumeAttributes or an inline volume's
# volumeAttributes). Keys kubelet adds itself (csi.storage.k8s.io/*) are ignored.
KEY_MODEL = "model"
KEY_REVISION = "revision"
KEY_URI = "uri"
#: "true": publish only once every file of the model is hydrated (complete and verified on the node)
KEY_HYDRATE = "hydrate"

_URI_SCHEMES = ("hf://", "mx://")


@dataclass(frozen=True)
class ModelVolume:
    """A model name ``org/name`` and, if pinned, the revision (branch, tag or commit)."""

    name: str
    revision: str | None = None
    hydrate: bool = False

    def __str__(self) -> str:
        return self.name if self.revision is None else f"{self.name}@{self.revision}"


def parse_volume_context(context: Mapping[str, str]) -> ModelVolume:
    """Read ``model`` (+ optional ``revision``) or ``uri`` from a volume context.

    ``model`` is ``org/name`` or ``org/name@revision``; ``uri`` is
    ``hf://org/name[@revision]`` or ``mx://org/name[@revision]``, a model the mxfs
    server resolves by name; ``hydrate: "true"`` publishes only once the model is fully
    on the node. Raises INVALID_ARGUMENT for anything else.
    """
    model = context.get(KEY_MODEL, "").strip()
    uri = context.get(KEY_URI, "").strip()
    revision = context.get(KEY_REVISION, "").strip() or None
    hydrate_text = context.get(KEY_HYDRATE, "false").strip().lower()
    if hydrate_text not in ("true", "false"):
        raise invalid_argument(f"volume context 'hydrate' must be \"true\" or \"false\", got {hydrate_text!r}")
    if model and uri:
        raise invalid_argument("volume context sets both 'model' and 'uri': set one")
    if uri:
        scheme = next((s for s in _URI_SCHEMES if uri.startswith(s)), None)
        if scheme is None:
            raise invalid_argument(f"volume context 'uri' {uri!r}: expected hf://org/name[@rev] or mx://org/name[@rev]")
        model = uri[len(scheme) :]
    if not model:
        raise invalid_argument("volume context needs 'model' (org/name) or 'uri'")
    name, sep, inline_revision = model.partition("@")
    if sep:
        if revision and revision != inline_revision:
            raise invalid_argument(f"'revision' {revision!r} contradicts {model!r}")
        revision = inline_revision
    validate_name(name)
    if revision is not None:
        validate_revision(revision)
    return ModelVolume(name, revision, hydrate=hydrate_text == "true")
