"""The undo stack of one run on one domain, written ahead to a journal on disk.

    with Session(state_dir, hypervisor, uuid, name) as session:
        session.change(OverlayRecord(...), do=create_overlay, undo=merge_back)
        ...

Entering takes the domain's lock (LockHeld, exit 3, when another run has it) and first
finishes what a dead earlier run left on the domain. Every state change is then:
write its undo record to the journal (fsynced) -> push the undo -> make the change. The
undo is pushed before the change is made because undos are idempotent and decide from
what they observe: if the change fails half-way, its undo cleans up whatever half of it
happened. On leaving a scope or the session, normally or by any exception (SIGINT,
SIGTERM and SIGHUP raise Interrupted while a session is open), the undos run newest first; each
one that succeeds drops its record. A record whose undo fails stays in the journal for
`virtbackup clean` (and the next run) and the session ends with UndoIncomplete.

Signals are held back while a change is being made and while undos run: a second Ctrl-C
must not strand a domain half-way between its overlay and its image. They take effect
(as Interrupted) right after.
"""

import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import JournalFile
from virtbackup.adapters.locks import FileLock, domain_lock
from virtbackup.core.consistency_errors import LeftoversRemain, UndoIncomplete
from virtbackup.core.progress import LogSteps, StepSink
from virtbackup.core.undo import Journal, UndoRecord, describe
from virtbackup.engine.runs.replay import replay_domain
from virtbackup.engine.runs.signals import SignalGuard
from virtbackup.engine.runs.undo import DEFAULT_COMMIT_TIMEOUT, Undoer

log = logging.getLogger(__name__)

T = TypeVar("T")


def new_run_id(now: datetime | None = None) -> str:
    """A UTC stamp (journals sort by it) and a random part (two runs in one second)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass
class _Undo:
    entry_id: int
    record: UndoRecord
    action: Callable[[], None]


class Session:
    def __init__(
        self,
        state_dir: Path,
        hypervisor: Hypervisor,
        domain_uuid: str,
        domain_name: str,
        *,
        steps: StepSink | None = None,
        run_id: str | None = None,
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
        finish_leftovers: bool = True,
    ) -> None:
        self.state_dir = state_dir
        self.hypervisor = hypervisor
        self.domain_uuid = domain_uuid
        self.domain_name = domain_name
        self.steps: StepSink = steps or LogSteps()
        self.run_id = run_id or new_run_id()
        self.undoer = Undoer(hypervisor, domain_uuid, domain_name, self.steps, commit_timeout)
        self._finish_leftovers = finish_leftovers
        self._lock: FileLock = domain_lock(state_dir, domain_uuid, domain_name)
        self._journal: JournalFile | None = None
        self._stack: list[_Undo] = []
        self._signals = SignalGuard()

    @property
    def journal_path(self) -> Path | None:
        return self._journal.path if self._journal else None

    # -- lifetime ----------------------------------------------------------------------

    def __enter__(self) -> "Session":
        self._signals.install()
        try:
            self._lock.acquire()
            if self._finish_leftovers:
                self._replay_leftovers()
        except BaseException:
            self._lock.release()
            self._signals.restore()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self._unwind(0)
        finally:
            self._lock.release()
            self._signals.restore()
        self._signals.raise_pending(exc_type is not None)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Undo what is changed inside the block when it ends, not when the session does."""
        mark = len(self._stack)
        try:
            yield
        except BaseException:
            self._unwind(mark)
            raise
        self._unwind(mark)
        self._signals.raise_pending(False)

    # -- changes -----------------------------------------------------------------------

    def register(self, record: UndoRecord, undo: Callable[[], None] | None = None) -> None:
        """Journal `record` and push its undo (by default the Undoer's for the record)."""
        with self._signals.held():
            self._push(record, undo)
        self._signals.raise_pending(False)

    def change(
        self, record: UndoRecord, do: Callable[[], T], undo: Callable[[], None] | None = None
    ) -> T:
        """Journal `record`, push its undo, then make the change `do`."""
        with self._signals.held():
            self._push(record, undo)
            result = do()
        self._signals.raise_pending(False)
        return result

    def _push(self, record: UndoRecord, undo: Callable[[], None] | None) -> None:
        if self._journal is None:
            journal = Journal(
                run_id=self.run_id,
                pid=os.getpid(),
                created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                uri=self.hypervisor.uri,  # where clean reconnects
                domain_uuid=self.domain_uuid,
                domain_name=self.domain_name,
            )
            self._journal = JournalFile.for_run(self.state_dir, journal)
        entry_id = self._journal.add(record)
        self._stack.append(_Undo(entry_id, record, undo or (lambda: self.undoer.undo(record))))

    def _unwind(self, mark: int) -> None:
        failures: list[str] = []
        with self._signals.held():
            while len(self._stack) > mark:
                item = self._stack.pop()
                try:
                    item.action()
                except Exception as err:  # every undo gets its turn, whatever the others do
                    failures.append(f"{describe(item.record)}: {err}")
                    self.steps.warning(
                        self.domain_name, f"cannot undo {describe(item.record)}: {err}"
                    )
                    continue
                if self._journal is not None:
                    self._journal.remove(item.entry_id)
        if failures:
            where = self._journal.path if self._journal else self.state_dir
            raise UndoIncomplete(
                f"{self.domain_name}: not everything could be undone ({'; '.join(failures)})",
                f"the journal {where} keeps it: run 'virtbackup clean' once the cause is fixed",
            )

    def _replay_leftovers(self) -> None:
        problems = replay_domain(
            self.state_dir, self.hypervisor, self.domain_uuid, self.domain_name, self.steps
        )
        if problems:
            raise LeftoversRemain(
                f"{self.domain_name}: an interrupted run left changes that cannot be undone "
                f"yet ({'; '.join(problems)})",
                "fix the cause, then run 'virtbackup clean'",
            )
