"""The chunks of the deduplicating repository on a filesystem (see core/repository_format).

Writers and garbage collection meet here, in other processes and on other hosts that
share DEST, and agree through the filesystem alone:
- every chunk a writer uses gets its mtime set to now (`touch`; a new chunk is born
  with it), and a writer is registered (`Writer`, a file in writers/ whose mtime is its
  start and is refreshed while it runs) from before its first chunk until after its
  index is in place;
- garbage collection (engine/stores/gc.py) only removes a chunk whose mtime is older
  than its own start and than the start of every live writer.
All times are the filesystem's (a created file's mtime, `os.utime` without a time), so
hosts whose clocks differ still agree.
"""

import errno
import logging
import math
import os
import secrets
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from virtbackup.core.backup_errors import CorruptBackup, StoreError, write_error
from virtbackup.core.repository_format import (
    CHUNKS_DIR,
    CONFIG_FILE,
    CONFIG_LIMIT,
    GC_HIDDEN_PREFIX,
    REPOSITORY_DIR,
    SEALED_CHUNKS_DIR,
    SECRETS_DIR,
    WRITERS_DIR,
    RepositoryConfig,
    RepositoryFormatError,
    build_config,
    chunk_path,
    is_chunk_name,
    parse_config,
)
from virtbackup.engine.datapath.frames import Buffer
from virtbackup.engine.datapath.io_control import NotRegularFile, read_regular_file, write_all

FILE_MODE = 0o600
DIR_MODE = 0o700
HEARTBEAT_SECONDS = 60.0  # how often a running writer refreshes its registration
# How long gc waits between hiding a chunk and deciding on it: beyond the attribute cache
# of an NFS client (3 s by default). A chunk missing for less may be on its way back.
SETTLE_SECONDS = 5.0
_TEMP_PREFIX = ".tmp-"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterEntry:
    name: str
    started: float  # the filesystem's time the writer registered
    seen: float  # the last heartbeat


class ChunkStore:
    """DEST/.virtbackup-repository: its description, the chunks of one chunk directory
    (chunks/, or sealed-chunks/ for encrypted backups) and the registered writers (of
    both: one garbage collection looks after both)."""

    def __init__(self, dest: Path, sealed: bool = False) -> None:
        self.root = dest / REPOSITORY_DIR
        self.sealed = sealed
        self.chunks = self.root / (SEALED_CHUNKS_DIR if sealed else CHUNKS_DIR)
        self.writers = self.root / WRITERS_DIR
        self._config: RepositoryConfig | None = None

    def exists(self) -> bool:
        return (self.root / CONFIG_FILE).is_file()

    @property
    def config(self) -> RepositoryConfig:
        if self._config is None:
            self._config = self._read_config()
        return self._config

    def create(self, config: RepositoryConfig | None = None) -> RepositoryConfig:
        """Make the repository unless it exists; its description either way. A
        repository whose description is gone while it holds chunks or secrets is damaged:
        made anew, it could get another chunk size (or lose its secret's id) than its
        backups were written with, so that is refused."""
        if self.exists():
            return self.config
        self._refuse_without_description()
        config = config or RepositoryConfig()
        for directory in (self.root, self.chunks, self.writers):
            try:
                directory.mkdir(mode=DIR_MODE, exist_ok=True)
            except OSError as err:
                raise write_error(err, directory) from None
        self.write_file(self.root, CONFIG_FILE, build_config(config).encode())
        self._config = self.config
        return self._config

    def _refuse_without_description(self) -> None:
        for directory in (CHUNKS_DIR, SEALED_CHUNKS_DIR, SECRETS_DIR):
            if _holds_files(self.root / directory):
                raise StoreError(
                    f"{self.root} holds {directory}/ but no {CONFIG_FILE}: the repository "
                    "is damaged",
                    f"put {CONFIG_FILE} back from a copy (its chunk_size is the chunk_size "
                    "of the backups' manifest.json), or move the directory away to start "
                    "a new repository",
                )

    def ensure_chunk_dir(self) -> None:
        """This store's chunk directory (a repository made before its first encrypted
        backup has no sealed-chunks/ yet)."""
        try:
            self.chunks.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as err:
            raise write_error(err, self.chunks) from None

    def open_lock_file(self, name: str) -> int:
        """A descriptor of the repository's lock file `name` (made if missing), to flock."""
        path = self.root / name
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as err:
            raise write_error(err, path) from None

    def reload_config(self) -> None:
        """Read the description again at next use (another writer may have changed it)."""
        self._config = None

    def update_config(self, config: RepositoryConfig) -> None:
        self.write_file(self.root, CONFIG_FILE, build_config(config).encode())
        self._config = None

    def write_file(self, directory: Path, name: str, data: bytes) -> int:
        """A file of the repository written whole or not at all (made 0700 if missing)."""
        try:
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as err:
            raise write_error(err, directory) from None
        return self._write_atomically(directory, name, (data,))

    def path(self, name: str) -> Path:
        return self.chunks / chunk_path(name)

    def touch(self, name: str) -> bool:
        """Mark the chunk as used now; False when it is not there (never written, or
        being removed by garbage collection: the caller writes it again). A link, FIFO
        or directory under a chunk's name is no chunk: written again, the chunk replaces
        it (or the write fails), so that no backup is committed over it."""
        _refuse_link(self.path(name).parent)
        try:
            os.utime(self.path(name), follow_symlinks=False)
            return stat.S_ISREG(os.lstat(self.path(name)).st_mode)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise write_error(err, self.path(name)) from None

    def add(self, name: str, frame: tuple[Buffer, ...]) -> int:
        """Store a chunk (its frame, in pieces) under its name; the bytes written."""
        return self._write_atomically(self.chunk_dir(name), name, frame)

    def chunk_dir(self, name: str) -> Path:
        """The chunk's directory chunks/ab/, made if missing; never a link."""
        directory = self.path(name).parent
        try:
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as err:
            raise write_error(err, directory) from None
        _refuse_link(directory)
        return directory

    def read(self, name: str, limit: int, uncache: bool = False) -> bytes:
        """A chunk's stored bytes (at most `limit`); CorruptBackup when missing, not a
        regular file or larger. `uncache`: its pages leave the page cache once read (a
        restore reads each chunk once and should not push the host's cache out)."""
        path = self.path(name)
        try:
            data = read_regular_file(path, limit, uncache)
        except FileNotFoundError:
            # hidden by a gc that was killed before deciding on it: still the chunk
            return self._read_hidden(name, limit)
        except NotRegularFile:
            raise CorruptBackup(f"chunk {path} is not a regular file") from None
        except OSError as err:
            raise CorruptBackup(f"cannot open chunk {path}: {err.strerror}") from None
        if len(data) > limit:
            raise CorruptBackup(f"chunk {path} is larger than any chunk can be")
        return data

    def hidden_path(self, name: str) -> Path:
        """Where garbage collection hides a chunk while it decides on it."""
        return self.path(name).with_name(GC_HIDDEN_PREFIX + name)

    def _read_hidden(self, name: str, limit: int) -> bytes:
        try:
            data = read_regular_file(self.hidden_path(name), limit)
        except OSError:
            raise CorruptBackup(f"chunk {name} is missing from {self.chunks}") from None
        if len(data) > limit:
            raise CorruptBackup(f"chunk {self.hidden_path(name)} is larger than any chunk can be")
        return data

    def names(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every stored chunk with its status (no temporary files, nothing else)."""
        for directory in self.prefix_dirs():
            try:
                entries = os.scandir(directory)
            except (NotADirectoryError, FileNotFoundError):
                continue
            with entries:
                for entry in entries:
                    if not (entry.name.startswith(directory.name) and is_chunk_name(entry.name)):
                        continue
                    try:
                        status = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(status.st_mode):
                        yield entry.name, status

    def temporary_files(self) -> Iterator[tuple[Path, os.stat_result]]:
        """Chunks a writer began and never renamed (killed while writing), and what a
        process killed while it read the clock or described the repository left."""
        for directory in (self.root, *self.prefix_dirs()):
            try:
                entries = list(os.scandir(directory))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for entry in entries:
                if entry.name.startswith(_TEMP_PREFIX):
                    try:
                        yield Path(entry.path), entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue

    def prefix_dirs(self) -> list[Path]:
        """The directories chunks/ab/: real ones only, so that what garbage collection
        renames and removes is never reached through a symbolic link."""
        try:
            if not stat.S_ISDIR(os.lstat(self.chunks).st_mode):
                return []
            names = sorted(os.listdir(self.chunks))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            try:
                if stat.S_ISDIR(os.lstat(self.chunks / name).st_mode):
                    found.append(self.chunks / name)
            except FileNotFoundError:
                continue
        return found

    def writer(self) -> "Writer":
        return Writer(self.writers)

    def live_writers(self, now: float, stale_after: float) -> list[WriterEntry]:
        """Registered writers whose heartbeat is younger than `stale_after` seconds."""
        found = []
        for name in self.registrations():
            path = self.writers / name
            try:
                status = os.lstat(path)
                # never through a link, never blocking on a planted FIFO
                started = float(read_regular_file(path, 64).decode() or status.st_mtime)
            except (OSError, ValueError):
                continue
            # A heartbeat is the filesystem's now when it was given: one far ahead of
            # now was not (it would make the writer live for ever), nor is a start that
            # is not a time (it would put the cutoff before every chunk).
            if not math.isfinite(started) or abs(now - status.st_mtime) >= stale_after:
                continue
            found.append(WriterEntry(name, started, status.st_mtime))
        return found

    def registrations(self) -> list[str]:
        """The names in writers/ (none when it does not exist); StoreError when it cannot
        be listed: then which writers live cannot be told."""
        try:
            return sorted(os.listdir(self.writers))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StoreError(f"cannot list the writers in {self.writers}: {err.strerror}") from None

    def filesystem_now(self) -> float:
        """The filesystem's current time: the mtime of a file made and removed at once."""
        marker = self.root / f"{_TEMP_PREFIX}clock-{secrets.token_hex(8)}"
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                return os.fstat(fd).st_mtime
            finally:
                os.close(fd)
                os.unlink(marker)
        except OSError as err:
            raise write_error(err, marker) from None

    def _read_config(self) -> RepositoryConfig:
        path = self.root / CONFIG_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise StoreError(
                f"cannot read the repository description {path}: {err.strerror}"
            ) from None
        with os.fdopen(fd, "rb") as description:
            data = description.read(CONFIG_LIMIT + 1)
        try:
            if len(data) > CONFIG_LIMIT:
                raise RepositoryFormatError("is too large")
            return parse_config(data.decode("utf-8", errors="replace"))
        except RepositoryFormatError as err:
            raise CorruptBackup(f"repository description {path} {err}") from None

    def _write_atomically(self, directory: Path, name: str, parts: tuple[Buffer, ...]) -> int:
        """Write `parts` to a temporary file in `directory`, fsync it, rename it to `name`."""
        temporary, written = self.write_temporary(directory, name, parts, sync=True)
        rename_into_place(temporary, directory / name)
        return written

    def write_temporary(
        self, directory: Path, name: str, parts: tuple[Buffer, ...], sync: bool
    ) -> tuple[Path, int]:
        """`parts` in a new temporary file in `directory` for `name` (fsynced with
        `sync`): its path and the bytes written. Nothing is left on failure."""
        temporary = directory / f"{_TEMP_PREFIX}{name}-{secrets.token_hex(6)}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                written = write_all(fd, parts)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            remove_quietly(temporary)
            raise write_error(err, directory / name) from None
        except BaseException:
            remove_quietly(temporary)
            raise
        return temporary, written


class Writer:
    """A backup writing into the repository, registered in writers/ while it runs: as a
    context manager, registered on entry (before it uses any chunk) and removed on exit
    (after its index is in place). A thread refreshes the registration's mtime so that
    garbage collection can tell a live writer from one that was killed."""

    def __init__(self, writers: Path) -> None:
        self.path = writers / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.started = 0.0
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> Self:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                self.started = os.fstat(fd).st_mtime
                os.write(fd, repr(self.started).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise write_error(err, self.path) from None
        self._heartbeat = threading.Thread(target=self._beat, name="vb-writer", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        remove_quietly(self.path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError as err:  # the next gc may then take us for dead: say so
                log.warning("cannot refresh the writer registration %s: %s", self.path, err)


def _holds_files(directory: Path) -> bool:
    """Whether anything but empty directories lies below `directory` (not followed
    through links; a missing directory holds nothing)."""
    for _path, _dirs, files in os.walk(directory):
        if files:
            return True
    return False


def _refuse_link(directory: Path) -> None:
    """A chunk directory must be a real one: gc and verify never look through a link
    (prefix_dirs), so a chunk written or found through one would be out of their sight."""
    if os.path.islink(directory):
        raise StoreError(
            f"chunk directory {directory} is a symbolic link",
            "remove it: virtbackup makes its own",
        )


def rename_into_place(temporary: Path, final: Path) -> None:
    """Give a written temporary file its name; it is removed when that fails."""
    try:
        os.rename(temporary, final)
    except OSError as err:
        remove_quietly(temporary)
        raise write_error(err, final) from None


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError as err:
        if err.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", path, err.strerror)
