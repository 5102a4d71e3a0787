"""Mount table parsing and volume context parsing, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxfs.errors import InvalidModelName
from mxfs_csi import mounts
from mxfs_csi.status import CsiError
from mxfs_csi.volume import ModelVolume, parse_volume_context
from tests.csi.csi_fixtures import unmount_everything_under

SAMPLE = (
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
    "40 22 0:48 / /models rw,nosuid,nodev,relatime shared:20 - fuse.mxfs mxfs rw,user_id=0\n"
    "41 22 0:48 /acme/tiny /var/lib/kubelet/pods/p\\040q/vol ro,nosuid,nodev shared:20 "
    "- fuse.mxfs mxfs rw,user_id=0\n"
    "42 22 0:21 /tmp/a\\134b /mnt/x rw master:3 propagate_from:1 - ext4 /dev/root rw\n"
)


def test_parse_mountinfo_fields_and_escapes() -> None:
    root, models, pod, odd = mounts.parse_mountinfo(SAMPLE)
    assert (root.mount_point, root.fstype, root.read_only) == ("/", "ext4", False)
    assert (models.device, models.root, models.fstype) == ("0:48", "/", "fuse.mxfs")
    assert pod.mount_point == "/var/lib/kubelet/pods/p q/vol"
    assert pod.root == "/acme/tiny" and pod.read_only
    assert odd.root == "/tmp/a\\b" and odd.fstype == "ext4"  # optional fields skipped


def test_mount_at_sees_a_same_filesystem_bind(tmp_path: Path) -> None:
    """os.path.ismount misses this case; the mount table does not."""
    source, target = tmp_path / "src dir", tmp_path / "tgt dir"
    source.mkdir()
    target.mkdir()
    (source / "f").write_bytes(b"data")
    try:
        mounts.bind_read_only(source, target)
        entry = mounts.mount_at(target)
        assert entry is not None and entry.read_only
        assert (target / "f").read_bytes() == b"data"
        mounts.unmount(target)
        assert mounts.mount_at(target) is None
        mounts.unmount(target)  # not mounted any more: still fine
    finally:
        unmount_everything_under(tmp_path)


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"model": "acme/tiny"}, ModelVolume("acme/tiny")),
        ({"model": " acme/tiny ", "revision": "v1.0"}, ModelVolume("acme/tiny", "v1.0")),
        ({"model": "acme/tiny@main"}, ModelVolume("acme/tiny", "main")),
        ({"model": "acme/tiny@main", "revision": "main"}, ModelVolume("acme/tiny", "main")),
        ({"uri": "hf://Org-1/Name_2.x"}, ModelVolume("Org-1/Name_2.x")),
        ({"uri": "mx://acme/tiny@refs/pr/1"}, ModelVolume("acme/tiny", "refs/pr/1")),
        ({"uri": "hf://acme/tiny", "revision": "abc"}, ModelVolume("acme/tiny", "abc")),
        ({"model": "acme/tiny", "csi.storage.k8s.io/pod.name": "p"}, ModelVolume("acme/tiny")),
    ],
)
def test_parse_volume_context(context: dict, expected: ModelVolume) -> None:
    assert parse_volume_context(context) == expected


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"revision": "main"},
        {"model": "acme"},
        {"model": "acme/tiny/extra"},
        {"model": "acme/ti--ny"},
        {"model": "acme/tiny@a..b"},
        {"model": "a/b", "uri": "hf://a/b"},
        {"uri": "gs://bucket/model"},
        {"uri": "hf://acme/tiny@v1", "revision": "v2"},
    ],
)
def test_parse_volume_context_rejects(context: dict) -> None:
    with pytest.raises((CsiError, InvalidModelName)):
        parse_volume_context(context)
