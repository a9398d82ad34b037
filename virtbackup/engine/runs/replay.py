"""Undo the journal of a run that died: at the start of a run on its domain, and in
`virtbackup clean`.

The records are undone newest first by the same Undoer a live run uses, while the caller
holds the domain lock; each record is dropped once undone, and the journal file with its
last record. A journal that does not describe what a run of ours creates is not acted on
(core/undo.foreign_journal).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import JournalFile, list_journals, load_journal
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.progress import StepSink
from virtbackup.core.undo import Entry, Journal, JournalError, describe, foreign_journal
from virtbackup.engine.runs.signals import SignalGuard
from virtbackup.engine.runs.undo import DEFAULT_COMMIT_TIMEOUT, Undoer


def replay_domain(
    state_dir: Path, hypervisor: Hypervisor, domain_uuid: str, domain_name: str, steps: StepSink
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
        problems += replay(journal, hypervisor, steps)
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
    hypervisor: Hypervisor,
    steps: StepSink,
    *,
    dry_run: bool = False,
    commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
) -> list[str]:
    """Undo a dead run's journal, newest record first; what could not be undone."""
    header = journal.journal
    undoer = Undoer(
        hypervisor, header.domain_uuid, header.domain_name, steps, commit_timeout, dry_run
    )
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
    except Exception as err:  # OSError and the like: report, keep the record, go on
        message = f"{name}: cannot undo {describe(entry.record)}: {err}"
        steps.warning(name, message)
        return message
    if not dry_run:
        journal.remove(entry.id)
    return None
