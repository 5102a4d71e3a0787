"""Publish = read-only bind mount of a model directory at a target path; and back."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from mxfs_csi import mounts
from mxfs_csi.status import already_exists, failed_precondition, from_os_error, invalid_argument, is_stale

log = logging.getLogger(__name__)

_MAX_STACKED = 16  # mounts piled on one target that unpublish will peel off
MXFS_FSTYPE = "fuse.mxfs"  # the node daemon's mount (fsname=mxfs, subtype=mxfs), and binds of it


def canonical_target(target: str) -> Path:
    """``target`` with its parent's symlinks resolved; the target itself is never
    touched, since it may be a mount left behind by a dead daemon."""
    path = Path(os.path.normpath(target))
    return Path(os.path.realpath(path.parent)) / path.name


class KeyedLocks:
    """One lock per key, so calls for one target path run one at a time."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def is_symlink(path: Path) -> bool:
    """True for a symbolic link (a mount point that does not answer, e.g. a dead FUSE mount,
    is a directory: mounts never sit on links)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def is_mxfs_mount(entry: mounts.MountEntry) -> bool:
    """A mount of the node daemon's filesystem (or a bind of part of it), live or dead."""
    return entry.fstype == MXFS_FSTYPE or (entry.fstype.startswith("fuse") and entry.source == "mxfs")


class Publisher:
    """Bind mounts of the node mount's model directories into pods' target paths.

    Only mounts the driver published are ever unmounted: a bind of the node mount (the
    mxfs filesystem type, also after a restart of the driver) or a target this process
    published. Nothing is ever unlinked: a target is removed only as an empty directory.
    """

    def __init__(self) -> None:
        self._locks = KeyedLocks()
        self._published: dict[str, int] = {}  # target -> mount id of the bind this process made
        self._published_lock = threading.Lock()

    def is_ours(self, target: Path, entry: mounts.MountEntry) -> bool:
        """True if ``entry`` (mounted at ``target``) is a volume this driver published."""
        if is_mxfs_mount(entry):
            return True
        with self._published_lock:
            return self._published.get(str(target)) == entry.mount_id

    def publish(self, source: Path, target: Path) -> bool:
        """Bind ``source`` read-only at ``target``; False when it already was (idempotent).

        A target left behind by a crashed daemon is cleaned first; a target that
        holds anything else raises ALREADY_EXISTS.
        """
        with self._locks.hold(str(target)):
            if is_symlink(target):
                raise invalid_argument(f"target {target} is a symbolic link: refusing to mount through it")
            if self._published_here(source, target):
                return False
            try:
                target.mkdir(exist_ok=True)
            except OSError as exc:
                raise from_os_error(exc, f"creating target {target}") from exc
            if is_symlink(target) or not target.is_dir():
                raise already_exists(f"target {target} exists and is not a directory")
            try:
                mounts.bind_read_only(source, target)
            except OSError as exc:
                raise from_os_error(exc, f"bind-mounting {source} at {target}") from exc
            entry = mounts.mount_at(target)
            if entry is not None:
                with self._published_lock:
                    self._published[str(target)] = entry.mount_id
            log.info("published %s at %s (read-only)", source, target)
            return True

    def _published_here(self, source: Path, target: Path) -> bool:
        """True if ``source`` is already bound read-only at ``target``."""
        entry = mounts.mount_at(target)
        if entry is None:
            return False
        try:
            os.statvfs(target)  # reaches the daemon; a cached stat would hide a dead one
            here = os.stat(target)
        except OSError as exc:
            if not is_stale(exc):
                raise from_os_error(exc, f"checking target {target}") from exc
            if not self.is_ours(target, entry):
                raise already_exists(f"target {target} holds a dead mount the driver did not publish") from exc
            log.warning("target %s is a stale mount (daemon restarted?): cleaning it", target)
            self._unmount_ours(target)
            return False
        want = os.stat(source)
        if (here.st_dev, here.st_ino) == (want.st_dev, want.st_ino) and entry.read_only:
            return True
        raise already_exists(f"target {target} already holds another volume ({entry.root})")

    def published_at(self, target: Path) -> mounts.MountEntry | None:
        """The mount of a volume this driver published at ``target``, or None."""
        entry = mounts.mount_at(target)
        return entry if entry is not None and self.is_ours(target, entry) else None

    def unpublish(self, target: Path) -> bool:
        """Unmount the driver's mounts at ``target`` and remove it if it is an empty directory.

        False when there was nothing to do: an unknown target is not an error. A mount the
        driver did not publish raises FAILED_PRECONDITION and is left alone; so is anything
        that is not an empty directory (never unlinked).
        """
        with self._locks.hold(str(target)):
            removed = self._unmount_ours(target)
            with self._published_lock:
                self._published.pop(str(target), None)
            if is_symlink(target) or (target.exists() and not target.is_dir()):
                log.warning("unpublish %s: not a directory the driver made; leaving it", target)
                return removed
            try:
                target.rmdir()
            except FileNotFoundError:
                return removed
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    log.warning("unpublish %s: the directory is not empty; leaving it", target)
                    return removed
                raise from_os_error(exc, f"removing target {target}") from exc
            log.info("unpublished %s", target)
            return True

    def _unmount_ours(self, target: Path) -> bool:
        count = 0
        while (entry := mounts.mount_at(target)) is not None:
            if not self.is_ours(target, entry):
                raise failed_precondition(f"target {target} holds a {entry.fstype} mount of {entry.source} "
                                          "that the driver did not publish: leaving it")
            if count == _MAX_STACKED:
                raise from_os_error(OSError(errno.EBUSY, "too many mounts stacked"), f"unmounting {target}")
            try:
                mounts.unmount(target)
            except OSError as exc:
                raise from_os_error(exc, f"unmounting {target}") from exc
            count += 1
        return count > 0
