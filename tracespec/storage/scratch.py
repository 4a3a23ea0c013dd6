"""Temporary folders that belong to a living process: a writer's staging folder, a reader's
temporary cache (docs/storage.md).

Constraints:
- A process killed with SIGKILL (or by the out-of-memory killer, or a machine's power) runs no
  clean-up: its temporary folder stays in the temporary directory, holding what one publication
  staged or what a reader had fetched.
- A process holds each of its folders with an exclusive ``flock`` on the folder itself, which the
  kernel releases when the process ends, however it ends. A folder of this kind whose lock can be
  taken has no living owner: it is an orphan, and the next process to make a folder of the same
  kind deletes it, holding the lock while it does.
- A new folder is locked, then checked to be still there: between ``mkdtemp`` and the lock,
  another process may have found it unlocked and deleted it; then another is made.
- Folders are named ``<kind>-<pid>-<random>``: the owner's process id tells a person whose folder
  it is (the lock, not the id, decides), and folders of tracespec versions that held no lock
  (``<kind>-<random>``) are never taken for orphans, since one of them may still be in use.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Final

__all__ = ["CACHE_KIND", "STAGING_KIND", "ScratchFolder"]

STAGING_KIND: Final = "tracespec-staging"
"""A writer's staging folder, for a trace at a URL."""
CACHE_KIND: Final = "tracespec-cache"
"""A reader's temporary cache of a trace at a URL (without ``--cache``)."""


class ScratchFolder:
    """A new folder ``<kind>-<pid>-<random>`` in the temporary directory, held by this process
    until :meth:`remove` (called when this object is collected, or at exit, at the latest).

    Making one first deletes the orphans of the same ``kind`` (folders whose process died)."""

    def __init__(self, kind: str) -> None:
        remove_orphans(kind)
        while True:
            folder = Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-"))
            held = _hold(folder, wait=True)
            if held is not None:
                break
        self.path = folder
        self._release = weakref.finalize(self, _remove_own, folder, held, os.getpid())

    def remove(self) -> None:
        """Delete the folder and let go of its lock (once; later calls do nothing)."""
        self._release()


def remove_orphans(kind: str) -> list[Path]:
    """Delete the folders of ``kind`` in the temporary directory whose owner has died (their lock
    can be taken); return them. Folders of living processes, and what cannot be read, stay."""
    pattern = re.compile(rf"^{re.escape(kind)}-[0-9]+-")
    root = Path(tempfile.gettempdir())
    try:
        names = [entry.name for entry in os.scandir(root) if pattern.match(entry.name)]
    except OSError:
        return []
    removed = []
    for name in names:
        held = _hold(root / name, wait=False)
        if held is not None:
            _remove_held(root / name, held)
            removed.append(root / name)
    return removed


def _hold(folder: Path, *, wait: bool) -> int | None:
    """Lock ``folder`` (waiting for the lock, or not); the open descriptor that holds the lock,
    or None if the lock is another process's (``wait=False``) or the folder is gone or not ours
    to read. A folder deleted or replaced while its lock was awaited is gone."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.stat(folder, follow_symlinks=False)):
            return fd
    except OSError:  # BlockingIOError: its owner lives; FileNotFoundError: deleted meanwhile
        pass
    os.close(fd)
    return None


def _remove_own(folder: Path, fd: int, owner: int) -> None:
    """Delete a folder this process made; a forked child that exits (and runs the finalizers it
    inherited) leaves its parent's folder alone."""
    if os.getpid() == owner:
        _remove_held(folder, fd)


def _remove_held(folder: Path, fd: int) -> None:
    """Delete a folder whose lock ``fd`` holds, then release the lock (a process that waited for
    it finds the folder gone)."""
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)
