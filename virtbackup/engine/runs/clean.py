"""`virtbackup clean`: finish the undo of every run that died, on any domain.

A journal in the state directory whose domain lock is free belongs to a run that is
gone (the kernel drops an flock with its holder, on kill -9 and on power loss alike).
It is replayed (runs/replay) while this process holds the domain lock. A record that
cannot be undone safely (the domain runs on an image that is neither its original nor
our overlay, say) is reported and kept. A journal that does not describe what a run of
ours creates (an overlay with another name or place, see core/undo.foreign_journal) is
not acted on at all: reported and kept.

Partial backup directories are the store's business: with `dests`, each store removes
the ones no live run holds, and the --skip-free work directories of dead runs there go
too, as do the repository writer registrations of this host's dead backups (so that
gc need not wait until they are stale to remove the chunks those backups left).
"""

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import JournalFile, journal_dir, list_journals
from virtbackup.adapters.locks import domain_lock
from virtbackup.adapters.workdirs import leftover_workdirs, remove_leftovers
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.progress import StepSink
from virtbackup.core.undo import JournalError
from virtbackup.engine.methods.lvm_undo import sweep_leftovers
from virtbackup.engine.runs.replay import load_our_journal, replay
from virtbackup.engine.runs.undo import DEFAULT_COMMIT_TIMEOUT
from virtbackup.engine.stores.gc import remove_dead_writers
from virtbackup.engine.stores.local import LocalStore

log = logging.getLogger(__name__)

Connect = Callable[[str], AbstractContextManager[Hypervisor]]


@dataclass
class CleanResult:
    journals: int = 0  # journals of dead runs looked at
    finished: int = 0  # of them, completely undone (or, in a dry run, with nothing to do)
    busy: list[str] = field(default_factory=list)  # domains a live run works on
    problems: list[str] = field(default_factory=list)  # what is left, and why
    partials: list[Path] = field(default_factory=list)  # partial backups (to be) removed
    writers: list[str] = field(default_factory=list)  # registrations of dead writers

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
        connections: dict[str, Hypervisor] = {}
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
    for dest in dests:
        for name in remove_dead_writers(dest, dry_run=dry_run):
            verb = "would remove" if dry_run else "removed"
            steps.step("-", f"{verb} the repository registration of dead backup {name}")
            result.writers.append(name)
    return result


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
    found: list[Path] = []
    for dest in dests:
        if dry_run:
            for partial in LocalStore(dest).remove_partials(dry_run=True):
                steps.step(
                    partial.parent.name,
                    f"would remove partial backup {partial} (unless a running backup holds it)",
                )
                found.append(partial)
            for workdir in leftover_workdirs(dest):
                steps.step(
                    "-",
                    f"would remove --skip-free work directory {workdir} "
                    "(unless a running backup holds it)",
                )
                found.append(workdir)
            continue
        for partial in LocalStore(dest).remove_partials():
            steps.step(partial.parent.name, f"removed partial backup {partial}")
            found.append(partial)
        for workdir in remove_leftovers(dest):
            steps.step("-", f"removed --skip-free work directory {workdir}")
            found.append(workdir)
    return found
