"""Publish = read-only bind mount of a model directory at a target path; and back."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from mxfs_csi import mounts
from mxfs_csi.status import already_exists, from_os_error, is_stale

log = logging.getLogger(__name__)

_MAX_STACKED = 16  # mounts piled on one target that unpublish will peel off


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


class Publisher:
    """Bind mounts of the node mount's model directories into pods' target paths."""

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    def publish(self, source: Path, target: Path) -> bool:
        """Bind ``source`` read-only at ``target``; False when it already was (idempotent).

        A target left behind by a crashed daemon is cleaned first; a target that
        holds anything else raises ALREADY_EXISTS.
        """
        with self._locks.hold(str(target)):
            if self._published_here(source, target):
                return False
            try:
                target.mkdir(exist_ok=True)
            except OSError as exc:
                raise from_os_error(exc, f"creating target {target}") from exc
            try:
                mounts.bind_read_only(source, target)
            except OSError as exc:
                raise from_os_error(exc, f"bind-mounting {source} at {target}") from exc
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
            log.warning("target %s is a stale mount (daemon restarted?): cleaning it", target)
            self._unmount_all(target)
            return False
        want = os.stat(source)
        if (here.st_dev, here.st_ino) == (want.st_dev, want.st_ino) and entry.read_only:
            return True
        raise already_exists(f"target {target} already holds another volume ({entry.root})")

    def is_published(self, target: Path) -> bool:
        """True if something is mounted at ``target``."""
        return mounts.mount_at(target) is not None

    def unpublish(self, target: Path) -> bool:
        """Unmount ``target`` (every mount stacked on it) and remove it.

        False when there was nothing to do: an unknown target is not an error.
        """
        with self._locks.hold(str(target)):
            removed = self._unmount_all(target)
            try:
                target.rmdir()
            except FileNotFoundError:
                return removed
            except NotADirectoryError:
                target.unlink()
            except OSError as exc:
                raise from_os_error(exc, f"removing target {target}") from exc
            log.info("unpublished %s", target)
            return True

    def _unmount_all(self, target: Path) -> bool:
        count = 0
        while mounts.mount_at(target) is not None:
            if count == _MAX_STACKED:
                raise from_os_error(OSError(errno.EBUSY, "too many mounts stacked"), f"unmounting {target}")
            try:
                mounts.unmount(target)
            except OSError as exc:
                raise from_os_error(exc, f"unmounting {target}") from exc
            count += 1
        return count > 0
