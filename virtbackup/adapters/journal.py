"""The undo journal on disk: one JSON file per run and domain in the state directory.

Every write replaces the whole file atomically (temporary file, fsync, rename, fsync of
the directory), so after a kill -9 or a power loss the file holds either the journal
before or after the change, never a torn one. The format is in core/undo.
"""

import json
import os
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


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as err:
        raise StateDirError(
            f"cannot create the state directory {path}: {err.strerror}",
            f"run as root, or choose another with --state-dir or ${STATE_DIR_ENV}",
        ) from None
    return path


def journal_dir(state_dir: Path) -> Path:
    return state_dir / JOURNAL_SUBDIR


def list_journals(state_dir: Path, domain_uuid: str | None = None) -> list[Path]:
    """The journal files present, oldest run first (run ids start with a UTC stamp)."""
    pattern = f"{domain_uuid}.*.json" if domain_uuid else "*.json"
    try:
        return sorted(journal_dir(state_dir).glob(pattern), key=lambda p: p.name.split(".")[1])
    except OSError:
        return []


def load_journal(path: Path) -> Journal:
    try:
        return journal_from_dict(json.loads(path.read_text()))
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
        directory = ensure_dir(journal_dir(state_dir))
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
        ensure_dir(self.path.parent)
        text = json.dumps(journal_to_dict(journal), indent=1) + "\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
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
