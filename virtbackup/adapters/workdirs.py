"""Private work directories of a run (e.g. --skip-free's compacted copies) and the sweep
of those a killed run left.

A run holds an flock on its directory for as long as it lives; the kernel drops it with
the process, so an unlocked directory older than LEFTOVER_AGE is a dead run's.
"""

import fcntl
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters.no_follow import is_held

log = logging.getLogger(__name__)

PREFIX = ".virtbackup-skip-free-"
# The age keeps a run that has not locked its new directory yet safe from a sweep.
LEFTOVER_AGE = 60.0


@contextmanager
def held_workdir(parent: Path) -> Iterator[Path]:
    """A new private directory in `parent`, locked while in use, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    lock = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.close(lock)


def leftover_workdirs(parent: Path) -> list[Path]:
    """The work directories in `parent`, whoever holds them (for a dry run's report)."""
    return sorted(parent.glob(f"{PREFIX}*"))


def remove_leftovers(parent: Path, now: float | None = None) -> list[Path]:
    """Remove the work directories of killed runs in `parent`; those removed."""
    now = time.time() if now is None else now
    removed = []
    for entry in parent.glob(f"{PREFIX}*"):
        try:
            info = entry.lstat()  # a symbolic link is never followed, nor removed through
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or now - info.st_mtime < LEFTOVER_AGE:
            continue
        if is_held(entry):
            continue  # a live run's
        log.info("removing %s, left by an interrupted run", entry)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
