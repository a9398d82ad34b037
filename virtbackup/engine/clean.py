"""Finish the undo of runs that died: `virtbackup clean` and the start of every run.

A journal in the state directory whose domain lock is free belongs to a run that is
gone (the kernel drops an flock with its holder, on kill -9 and on power loss alike).
Its records are undone newest first by the same Undoer a live run uses, while this
process holds the domain lock; each record is dropped once undone, and the journal
file with its last record. A record that cannot be undone safely (the domain runs on
an image that is neither its original nor our overlay, say) is reported and kept. A
journal that does not describe what a run of ours creates (an overlay with another name
or place, see core/undo.foreign_journal) is not acted on at all: reported and kept.

Partial backup directories are the store's business: with `dests`, each store removes
the ones no live run holds, and the --skip-free work directories of dead runs there go
too.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtbackup.adapters.journal import JournalFile, journal_dir, list_journals, load_journal
from virtbackup.adapters.locks import domain_lock
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.steps import StepSink
from virtbackup.core.undo import Entry, Journal, JournalError, describe, foreign_journal
from virtbackup.engine.lvm_undo import sweep_leftovers
from virtbackup.engine.session import SignalGuard
from virtbackup.engine.undo import DEFAULT_COMMIT_TIMEOUT, Undoer

log = logging.getLogger(__name__)

Connect = Callable[[str], AbstractContextManager[Any]]


@dataclass
class CleanResult:
    journals: int = 0  # journals of dead runs looked at
    finished: int = 0  # of them, completely undone (or, in a dry run, with nothing to do)
    busy: list[str] = field(default_factory=list)  # domains a live run works on
    problems: list[str] = field(default_factory=list)  # what is left, and why
    partials: list[Path] = field(default_factory=list)  # partial backups (to be) removed

    @property
    def clean(self) -> bool:
        return not self.problems


def clean(
    state_dir: Path,
    connect: Connect,
    steps: StepSink,
    *,
    dry_run: bool = False,
    dests: Sequence[Path] = (),
    commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
) -> CleanResult:
    """Undo what dead runs left: every journal in `state_dir`, partials under `dests`."""
    result = CleanResult()
    with ExitStack() as stack:
        connections: dict[str, Any] = {}
        for path in list_journals(state_dir):
            try:
                journal = load_our_journal(path)
            except JournalError as err:
                result.problems.append(str(err))
                steps.warning("-", f"{err}: left alone")
                continue
            lock = domain_lock(state_dir, journal.domain_uuid, journal.domain_name)
            if not lock.try_acquire():
                pid = lock.holder_pid()
                result.busy.append(journal.domain_name)
                steps.step(journal.domain_name, f"in use by a running virtbackup (pid {pid})")
                continue
            try:
                result.journals += 1
                if journal.uri not in connections:
                    connections[journal.uri] = stack.enter_context(connect(journal.uri))
                problems = replay(
                    JournalFile(path, journal),
                    connections[journal.uri],
                    steps,
                    dry_run=dry_run,
                    commit_timeout=commit_timeout,
                )
            except VirtbackupError as err:
                problems = [str(err)]
                steps.warning(journal.domain_name, str(err))
            finally:
                lock.release()
            result.problems += problems
            result.finished += not problems
        if not dry_run:
            _remove_stray_temporaries(state_dir)
    # LVM snapshots and mounts a dead run made but could not journal (or whose journal
    # is lost), found by name; skipped while a live run holds LVM snapshots.
    result.problems += sweep_leftovers(state_dir, steps, dry_run=dry_run)
    result.partials = _clean_partials(dests, steps, dry_run)
    return result


def replay_domain(
    state_dir: Path, conn: Any, domain_uuid: str, domain_name: str, steps: StepSink
) -> list[str]:
    """Undo every leftover journal of one domain; the caller holds its lock."""
    problems: list[str] = []
    for path in list_journals(state_dir, domain_uuid):
        try:
            journal = JournalFile(path, load_our_journal(path))
        except JournalError as err:
            problems.append(str(err))
            continue
        steps.step(domain_name, f"finishing the undo of interrupted run {journal.journal.run_id}")
        problems += replay(journal, conn, steps)
    return problems


def load_our_journal(path: Path) -> Journal:
    """The journal in `path`, if it describes only what a run of ours creates."""
    journal = load_journal(path)
    problem = foreign_journal(journal, path.name)
    if problem:
        raise JournalError(f"journal {path} is not one of ours: {problem}")
    return journal


def replay(
    journal: JournalFile,
    conn: Any,
    steps: StepSink,
    *,
    dry_run: bool = False,
    commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
) -> list[str]:
    """Undo a dead run's journal, newest record first; what could not be undone."""
    header = journal.journal
    undoer = Undoer(conn, header.domain_uuid, header.domain_name, steps, commit_timeout, dry_run)
    problems = []
    with _signals_wait_per_undo() as guard:
        for entry in header.undo_order():
            with guard.held():
                problem = _undo_one(journal, entry, undoer, steps, dry_run)
            if problem:
                problems.append(problem)
            guard.raise_pending(False)  # a signal ends clean between two records
    if not problems and not dry_run:
        journal.delete()
    return problems


@contextmanager
def _signals_wait_per_undo() -> Iterator[SignalGuard]:
    """A signal does not stop an undo half-way: it waits for the record at hand (whose
    undo then dropped it from the journal, or left it there for the next clean)."""
    guard = SignalGuard()
    guard.install()
    try:
        yield guard
    finally:
        guard.restore()


def _undo_one(
    journal: JournalFile, entry: Entry, undoer: Undoer, steps: StepSink, dry_run: bool
) -> str | None:
    """Undo one record and drop it from the journal; else what went wrong (kept)."""
    name = journal.journal.domain_name
    try:
        undoer.undo(entry.record)
    except VirtbackupError as err:
        steps.warning(name, f"cannot undo {describe(entry.record)}: {err}")
        return str(err)
    except Exception as err:  # libvirtError, OSError: report, keep the record, go on
        message = f"{name}: cannot undo {describe(entry.record)}: {err}"
        steps.warning(name, message)
        return message
    if not dry_run:
        journal.remove(entry.id)
    return None


def _remove_stray_temporaries(state_dir: Path) -> None:
    """A `.json.tmp` is what a run killed in the middle of a journal write leaves."""
    for tmp in journal_dir(state_dir).glob("*.json.tmp"):
        uuid = tmp.name.split(".")[0]
        lock = domain_lock(state_dir, uuid, uuid)
        if lock.try_acquire():
            try:
                tmp.unlink(missing_ok=True)
            finally:
                lock.release()


def _clean_partials(dests: Sequence[Path], steps: StepSink, dry_run: bool) -> list[Path]:
    """Partial backups and --skip-free work directories (compacted copies of whole disks,
    kept in DEST unless an overlay directory is configured) that dead runs left."""
    from virtbackup.adapters.store import BackupStore  # the data path's store
    from virtbackup.engine.skip_free import TMP_PREFIX, remove_leftovers

    found: list[Path] = []
    for dest in dests:
        if dry_run:
            for partial in BackupStore(dest).remove_partials(dry_run=True):
                steps.step(
                    partial.parent.name,
                    f"would remove partial backup {partial} (unless a running backup holds it)",
                )
                found.append(partial)
            for workdir in sorted(dest.glob(f"{TMP_PREFIX}*")):
                steps.step(
                    "-",
                    f"would remove --skip-free work directory {workdir} "
                    "(unless a running backup holds it)",
                )
                found.append(workdir)
            continue
        for partial in BackupStore(dest).remove_partials():
            steps.step(partial.parent.name, f"removed partial backup {partial}")
            found.append(partial)
        for workdir in remove_leftovers(dest):
            steps.step("-", f"removed --skip-free work directory {workdir}")
            found.append(workdir)
    return found
