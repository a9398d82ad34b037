"""The undo journal on disk: one JSON file per run and domain in the state directory.

Every write replaces the whole file atomically (temporary file, fsync, rename, fsync of
the directory), so after a kill -9 or a power loss the file holds either the journal
before or after the change, never a torn one. The format is in core/undo.

The state directory steers what runs as root (`clean` undoes what its journals say, the
locks decide who may touch a domain), so it must be ours, as sshd's StrictModes wants of
~/.ssh: the state directory and its journal/ and locks/ are created 0700 and refused
(exit 2, with the fix) when they are owned by another user or writable by group or
others, and so is every directory above them unless it is owned by root or by us and not
writable by others (a sticky directory such as /tmp is accepted: nobody else can replace
what we put there). Files in it are opened without following symbolic links and must be
regular files.
"""

import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from virtbackup.core.errors import UsageError
from virtbackup.core.undo import (
    Journal,
    JournalError,
    UndoRecord,
    journal_from_dict,
    journal_to_dict,
)

DEFAULT_STATE_DIR = Path("/var/lib/virtbackup")
STATE_DIR_ENV = "VIRTBACKUP_STATE_DIR"
JOURNAL_SUBDIR = "journal"
DIR_MODE = 0o700
FILE_MODE = 0o600


class StateDirError(UsageError):
    """The state directory (journals, locks) cannot be created or written."""


def resolve_state_dir(explicit: Path | None = None) -> Path:
    """--state-dir, else $VIRTBACKUP_STATE_DIR, else /var/lib/virtbackup."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(STATE_DIR_ENV)
    return Path(from_env) if from_env else DEFAULT_STATE_DIR


MAX_JOURNAL_BYTES = 1024 * 1024  # a run's journal holds a few records


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as err:
        raise StateDirError(
            f"cannot create the state directory {path}: {err.strerror}",
            f"run as root, or choose another with --state-dir or ${STATE_DIR_ENV}",
        ) from None
    return path


def ensure_state_subdir(path: Path) -> Path:
    """Create `path` (a directory of the state directory, or it) 0700 and check that it
    and everything above it are ours (see the module docstring); StateDirError if not."""
    _check_parents(path.parent, os.geteuid(), existing_only=True)  # before creating in them
    ensure_dir(path.parent)  # the state directory itself: 0700 when we create it
    check_state_dir(path.parent)
    ensure_dir(path)
    check_state_dir(path)
    return path


def check_state_dir(path: Path) -> None:
    """Refuse `path` unless it is a directory owned by us that only we can write, under
    directories only root or we can change; StateDirError (exit 2) naming the fix."""
    uid = os.geteuid()
    try:
        info = os.lstat(path)
    except OSError as err:
        raise StateDirError(f"cannot use the state directory {path}: {err.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        info = os.stat(path)  # an administrator's link: what it points to is checked below
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(
            f"state directory {path} is not a directory", "remove it or choose another"
        )
    if info.st_uid != uid:
        raise StateDirError(
            f"state directory {path} is owned by uid {info.st_uid}, not by us",
            f"run 'chown {_user(uid)} {path}' or choose another state directory",
        )
    if info.st_mode & 0o022:
        raise StateDirError(
            f"state directory {path} is writable by group or others",
            f"run 'chmod 0700 {path}'",
        )
    _check_parents(path, uid)


def _check_parents(path: Path, uid: int, existing_only: bool = False) -> None:
    real = Path(os.path.realpath(path))
    lexical = Path(os.path.abspath(path))
    for above in sorted({*real.parents, *lexical.parents}, key=lambda p: len(p.parts)):
        _check_parent(above, uid, existing_only)


def _check_parent(directory: Path, uid: int, existing_only: bool) -> None:
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        if existing_only:
            return
        raise StateDirError(f"cannot use {directory}: it does not exist") from None
    except OSError as err:
        raise StateDirError(f"cannot use {directory}: {err.strerror}") from None
    if info.st_uid not in (0, uid):
        raise StateDirError(
            f"{directory}, above the state directory, is owned by uid {info.st_uid}",
            f"run 'chown root {directory}' or choose another state directory",
        )
    if others_can_replace(info):
        raise StateDirError(
            f"{directory}, above the state directory, is writable by group or others",
            f"run 'chmod go-w {directory}' or choose another state directory",
        )


def others_can_replace(info: os.stat_result) -> bool:
    """Whether users other than the owner can rename or delete what is in the directory
    `info` describes: it is writable by group or others and not sticky (as /tmp is)."""
    return bool(info.st_mode & 0o022) and not info.st_mode & stat.S_ISVTX


def _user(uid: int) -> str:
    return "root" if uid == 0 else str(uid)


def open_private_file(path: Path, flags: int) -> int:
    """A descriptor of the regular file `path` in the state directory, opened without
    following a symbolic link and without blocking on a FIFO; StateDirError if it is
    something else."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, FILE_MODE)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateDirError(
                f"{path} is a symbolic link", "remove it: virtbackup makes its own"
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateDirError(f"{path} is not a regular file", "remove it")
        if info.st_uid != os.geteuid():
            raise StateDirError(
                f"{path} is owned by uid {info.st_uid}, not by us",
                "remove it: virtbackup makes its own",
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def journal_dir(state_dir: Path) -> Path:
    return state_dir / JOURNAL_SUBDIR


def list_journals(state_dir: Path, domain_uuid: str | None = None) -> list[Path]:
    """The journal files present, oldest run first (run ids start with a UTC stamp).
    StateDirError when the journal directory exists but is not ours."""
    directory = journal_dir(state_dir)
    if not os.path.lexists(directory):
        return []
    check_state_dir(directory)
    pattern = f"{domain_uuid}.*.json" if domain_uuid else "*.json"
    try:
        return sorted(directory.glob(pattern), key=lambda p: p.name.split(".")[1])
    except OSError:
        return []


def load_journal(path: Path) -> Journal:
    try:
        fd = open_private_file(path, os.O_RDONLY)
        with open(fd, "rb") as source:
            data = source.read(MAX_JOURNAL_BYTES + 1)
        if len(data) > MAX_JOURNAL_BYTES:
            raise ValueError(f"larger than {MAX_JOURNAL_BYTES} bytes")
        return journal_from_dict(json.loads(data))
    except StateDirError as err:
        raise JournalError(f"journal {err.message}", err.hint) from None
    except (OSError, ValueError) as err:
        raise JournalError(f"cannot read journal {path}: {err}") from None
    except RecursionError:  # arrays nested a hundred thousand deep
        raise JournalError(f"cannot read journal {path}: it is not a journal") from None
    except JournalError as err:
        raise JournalError(f"journal {path}: {err}") from None


@dataclass
class JournalFile:
    """A journal and the file it lives in; `add` and `remove` are durable on return."""

    path: Path
    journal: Journal

    @classmethod
    def for_run(cls, state_dir: Path, journal: Journal) -> "JournalFile":
        directory = ensure_state_subdir(journal_dir(state_dir))
        return cls(directory / f"{journal.domain_uuid}.{journal.run_id}.json", journal)

    def add(self, record: UndoRecord) -> int:
        journal, entry_id = self.journal.add(record)
        self._write(journal)
        return entry_id

    def remove(self, entry_id: int) -> None:
        journal = self.journal.remove(entry_id)
        if journal.entries:
            self._write(journal)
        else:
            self.delete()
            self.journal = journal

    def delete(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(self.path.parent)

    def _write(self, journal: Journal) -> None:
        ensure_state_subdir(self.path.parent)
        text = json.dumps(journal_to_dict(journal), indent=1) + "\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)  # left by a killed write (unlink never follows a link)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.journal = journal


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
