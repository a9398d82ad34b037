"""Locks in the state directory: one per domain, one for the host (`virtbackup all`).

A lock is an flock(2) on a file named after what it protects. The kernel drops it when
its holder dies, whatever the way (kill -9, power loss), so a free lock also tells
`clean` that the run which wrote a journal is gone. The holder writes its pid into the
file for the message the next run shows. Lock files are never deleted: unlinking a lock
file while another process waits on it would let two runs hold "the" lock. A lock file is
opened without following a symbolic link and must be a regular file of ours, in a locks/
directory that passes the state directory's checks (adapters/journal).
"""

import fcntl
import os
import time
from pathlib import Path

from virtbackup.adapters.journal import (
    ensure_state_subdir,
    journal_dir,
    open_private_file,
    resolve_state_dir,
)
from virtbackup.core.errors import LockHeld, VirtbackupError

LOCK_SUBDIR = "locks"
POLL_SECONDS = 0.5


class FileLock:
    """An exclusive, non-reentrant lock; `what` names the protected thing in messages."""

    def __init__(self, path: Path, what: str, shared: bool = False) -> None:
        self.path = path
        self.what = what
        self.shared = shared  # held by many sharing holders at once, never with an exclusive one
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to `wait` seconds; LockHeld (exit 3) if it stays taken."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        fd = open_lock_file(self.path)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(
                        fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
                    )
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._held_error() from None
                    time.sleep(POLL_SECONDS)
            if not self.shared:  # the pid of the one holder, for the message of the next
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False when another process holds it."""
        try:
            self.acquire()
        except LockHeld:
            return False
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if not self.shared:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def holder_pid(self) -> int | None:
        """The pid the holder wrote, if any (it may have just died)."""
        try:
            fd = open_private_file(self.path, os.O_RDONLY)
        except (OSError, VirtbackupError):
            return None
        with open(fd, "rb") as lock_file:
            text = lock_file.read(32).strip()
        return int(text) if text.isdigit() else None

    def _held_error(self) -> LockHeld:
        pid = self.holder_pid()
        holder = f" (pid {pid})" if pid else ""
        return LockHeld(
            f"{self.what} is in use by another virtbackup run{holder}",
            "wait for it to finish, or stop it and run 'virtbackup clean'",
        )

    def __enter__(self) -> "FileLock":
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def prepare_state_dir(explicit: Path | None) -> Path:
    """The state directory with its journal/ and locks/, created and checked before a run
    starts: one that is not ours stops the run (StateDirError, exit 2), not each domain."""
    state_dir = resolve_state_dir(explicit)
    ensure_state_subdir(journal_dir(state_dir))
    ensure_state_subdir(state_dir / LOCK_SUBDIR)
    return state_dir


def open_lock_file(path: Path) -> int:
    """A read-write descriptor of lock file `path`, created 0600 if missing."""
    ensure_state_subdir(path.parent)
    return open_private_file(path, os.O_RDWR | os.O_CREAT)


def domain_lock(state_dir: Path, domain_uuid: str, domain_name: str) -> FileLock:
    """The lock of one domain, by uuid: a renamed domain keeps its lock."""
    return FileLock(state_dir / LOCK_SUBDIR / f"domain-{domain_uuid}.lock", f"domain {domain_name}")


def host_lock(state_dir: Path) -> FileLock:
    """The lock of the whole host, for runs over every domain (`virtbackup all`)."""
    return FileLock(state_dir / LOCK_SUBDIR / "host.lock", "this host")


def remote_repository_lock(state_dir: Path, shared: bool) -> FileLock:
    """This host's lock of the remote repository: shared by the uploads of its backups,
    exclusive for its remote garbage collection (engine/stores/remote_gc.py)."""
    return FileLock(
        state_dir / LOCK_SUBDIR / "remote-repository.lock", "the remote repository", shared
    )
