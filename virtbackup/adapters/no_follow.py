"""File-system calls for directories that others may have written to (a backup
destination, its backups, the run records beside them): nothing is reached through a
symbolic link, only regular files are read, and never more of one than a bound. A FIFO
would block a read and a device is itself an action to open, so a file's kind is checked
before it is opened and again on the open descriptor (it may be replaced in between).
"""

import fcntl
import os
import stat
from pathlib import Path

from virtbackup.core.backup_errors import CorruptBackup


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them. A symbolic link, a
    FIFO, a device or a larger file is CorruptBackup; a missing file is
    FileNotFoundError."""
    kind = _file_kind(os.lstat(path).st_mode)
    if kind is None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            kind = _file_kind(info.st_mode)  # (replaced between lstat and open)
            if kind is None:
                if info.st_size > limit:
                    raise CorruptBackup(f"{path} is too large to be ours ({info.st_size} bytes)")
                chunks = []
                size = 0
                while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
                    chunks.append(chunk)
                    size += len(chunk)
                if size > limit:
                    raise CorruptBackup(f"{path} is too large to be ours (it grew while read)")
                return b"".join(chunks)
        finally:
            os.close(fd)
    raise CorruptBackup(f"{path} is {kind}, not a regular file")


def _file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def is_real_dir(name: str | Path, dir_fd: int | None = None) -> bool:
    """A directory, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir(path: Path) -> int:
    """A descriptor of the directory `path`; OSError (ELOOP) when it is a symbolic link."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def is_held(name: str | Path, dir_fd: int | None = None) -> bool:
    """Whether a live process holds the flock of directory `name` (a run writing into it);
    True as well when that cannot be told, so that the caller leaves it alone."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def unlink_at(name: str, dir_fd: int) -> None:
    """Remove the entry `name` of the directory `dir_fd`, if it is there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
