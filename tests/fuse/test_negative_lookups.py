"""Lookups of names that do not exist: remembered on node and server, the tree stays bounded."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mxfs.fuse.tree import MAX_PLACEHOLDERS, Tree
from mxfs.manifest.names import hub_folder
from mxfs.misses import RecentMisses
from tests.conftest import MODEL

LOOKUPS = 10_000
DISTINCT = 50  # missing models asked again and again (a loader probing, a typo in a pod spec)


def _missing(path: Path) -> None:
    with pytest.raises(OSError) as info:
        os.stat(path)
    assert info.value.errno == errno.ENOENT, path


def test_ten_thousand_missing_lookups_make_a_bounded_number_of_server_requests(start_server, start_mount,
                                                                             monkeypatch):
    server = start_server()
    monkeypatch.setenv("MODEL_EXPRESS_MOUNT_NEGATIVE_TTL", "600")  # the test must not outlive a TTL
    daemon = start_mount(server)
    mnt = daemon.mountpoint
    org = MODEL.split("/")[0]
    asked_before = server.metric("mxfs_server_requests_total", method="GetManifest")
    files_before = os.statvfs(mnt).f_files
    for i in range(LOOKUPS):
        n = i % DISTINCT
        kind = i % 4
        if kind == 0:
            _missing(mnt / org / f"missing-{n}")
        elif kind == 1:
            _missing(mnt / "hub" / hub_folder(f"{org}/missing-{n}"))
        elif kind == 2:
            _missing(mnt / f"no-such-org-{n}" / "model")
        else:  # a new hidden placeholder directory each time (no server request until a model is asked)
            os.stat(mnt / f"unique-org-{i}")
    asked = server.metric("mxfs_server_requests_total", method="GetManifest") - asked_before
    # each distinct missing model is asked once (hub and plain paths may ask it once each)
    assert asked <= 3 * DISTINCT, f"{asked} GetManifest requests for {LOOKUPS} lookups"
    assert os.statvfs(mnt).f_files <= files_before + MAX_PLACEHOLDERS  # the tree stayed bounded
    assert not [name for name in os.listdir(mnt) if name.startswith(("unique-org-", "no-such-org-"))]
    assert (mnt / MODEL / "config.json").is_file()  # the real model is still served
    assert daemon.proc.poll() is None


def test_recent_misses_expire_and_stay_bounded() -> None:
    now = [0.0]
    misses: RecentMisses[str] = RecentMisses(ttl_s=10, max_entries=3, clock=lambda: now[0])
    for name in "abcd":
        misses.add(name, f"{name} not found")
    assert len(misses) == 3 and misses.get("a") is None and misses.get("d") == "d not found"
    now[0] = 10.0
    assert misses.get("d") is None and misses.get("b") is None


def test_placeholders_are_bounded_and_forgotten_inodes_are_enoent() -> None:
    from mxfs.errors import ModelNotFound

    tree = Tree(max_placeholders=4)
    first = None
    for i in range(100):
        tree.pending_ref(1, f"org-{i}")
        if first is None:
            first = tree.child(1, "org-0").inode
    assert len(tree.nodes) <= 2 + 4  # root, hub and the newest placeholders
    with pytest.raises(ModelNotFound):
        tree.get(first)
    assert tree.child(1, "org-99") is not None
