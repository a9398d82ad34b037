"""Carry out the undo of one journal record, from what is observed now.

The same code undoes a change at the end of a run and replays a dead run's journal in
`clean`: it looks at the domain (live XML, definition, state, files), asks core/undo
what is left to do, does one step, and looks again, so it is safe to run after a crash
in the middle of an earlier undo. A dry run only reports the plan.
"""

import logging
import os
import stat
from dataclasses import dataclass

from virtbackup.adapters import images, qemu_nbd
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import AgentError
from virtbackup.core.backup_job import job_socket
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.lvm import LVM_RECORD_TYPES
from virtbackup.core.model import DomainState
from virtbackup.core.progress import StepSink
from virtbackup.core.undo import (
    BackupJobRecord,
    DiskObservation,
    FrozenRecord,
    InstantPullRecord,
    NbdServerRecord,
    OverlayPlan,
    OverlayRecord,
    OverlayStep,
    StateRecord,
    StateStep,
    UndoRecord,
    describe,
    plan_overlay_undo,
    plan_state_undo,
)
from virtbackup.engine.methods.lvm_undo import undo_lvm_record
from virtbackup.engine.runs.instant_pull import finish_instant_pull

log = logging.getLogger(__name__)

DEFAULT_COMMIT_TIMEOUT = 3600.0
MAX_ROUNDS = 8  # observe-plan-act rounds per record; each round makes progress


class UndoBlocked(VirtbackupError):
    """A record cannot be undone safely now; the journal keeps it."""


@dataclass
class Undoer:
    hypervisor: Hypervisor
    domain_uuid: str
    domain_name: str
    steps: StepSink
    commit_timeout: float = DEFAULT_COMMIT_TIMEOUT
    dry_run: bool = False

    def undo(self, record: UndoRecord) -> None:
        """Undo `record` completely, or raise (UndoBlocked, CommitFailed, ...)."""
        if isinstance(record, OverlayRecord):
            self._undo_overlay(record)
        elif isinstance(record, FrozenRecord):
            self._thaw()
        elif isinstance(record, LVM_RECORD_TYPES):
            undo_lvm_record(record, self.steps, self.domain_name, self.dry_run)
        elif isinstance(record, BackupJobRecord):
            self._end_backup_job(record)
        elif isinstance(record, NbdServerRecord):
            self._stop_nbd_server(record)
        elif isinstance(record, InstantPullRecord):
            if self.dry_run:
                self.steps.step(self.domain_name, f"would finish the {describe(record)}")
            else:
                finish_instant_pull(self.hypervisor, self.domain_uuid, record)
        else:
            self._restore_state(record)

    # -- overlays ------------------------------------------------------------------------

    def observe(self, record: OverlayRecord) -> DiskObservation:
        exists = os.path.lexists(record.overlay)
        dom = self.hypervisor.find(self.domain_uuid)
        if dom is None:
            return DiskObservation(domain_exists=False, overlay_exists=exists)
        active = dom.is_active()
        live = dom.live_disks().get(record.target) if active else None
        defined = (dom.config_disks() or {}).get(record.target)
        return DiskObservation(
            domain_exists=True,
            active=active,
            live_source=live.path if live else None,
            job=dom.block_job_active(record.target) if active else False,
            config_source=defined.path if defined else None,
            overlay_exists=exists,
        )

    def plan(self, record: OverlayRecord) -> OverlayPlan:
        return plan_overlay_undo(record, self.observe(record))

    def _undo_overlay(self, record: OverlayRecord) -> None:
        for _round in range(MAX_ROUNDS):
            plan = self.plan(record)
            if plan.problem:
                raise UndoBlocked(f"{self.domain_name}: {plan.problem}")
            if not plan.steps:
                return
            if self.dry_run:
                for step in plan.steps:
                    self.steps.step(self.domain_name, "would " + _overlay_text(step, record))
                return
            for step in plan.steps:
                # The overlay goes only when a fresh look agrees nothing uses it any more.
                if step == OverlayStep.DELETE and self.plan(record).steps != (step,):
                    break
                self._overlay_step(step, record)
        raise UndoBlocked(f"{self.domain_name}: overlay {record.overlay} keeps coming back")

    def _overlay_step(self, step: OverlayStep, record: OverlayRecord) -> None:
        self.steps.step(self.domain_name, _overlay_text(step, record))
        dom = self.hypervisor.find(self.domain_uuid)
        if step == OverlayStep.DELETE:
            # An overlay is a qcow2 file we created: anything else there is not ours.
            if not stat.S_ISREG(os.lstat(record.overlay).st_mode):
                raise UndoBlocked(
                    f"{self.domain_name}: {record.overlay} is not a regular file: left alone"
                )
            os.unlink(record.overlay)
            return
        if dom is None:
            return  # gone meanwhile: the next round plans again
        if step == OverlayStep.COMMIT_PIVOT:
            dom.start_active_commit(record.target)
            dom.pivot_when_ready(record.target, self.commit_timeout)
        elif step == OverlayStep.FINISH_JOB:
            dom.pivot_when_ready(record.target, self.commit_timeout)
        elif step == OverlayStep.COMMIT_OFFLINE:
            images.commit(record.overlay)
        elif step == OverlayStep.REDEFINE:
            self.hypervisor.redefine_disk(
                dom,
                record.target,
                record.original_type,
                record.original,
                record.original_format,
            )

    # -- backup jobs ---------------------------------------------------------------------

    def _end_backup_job(self, record: BackupJobRecord) -> None:
        """End the job if it is still ours and runs (another tool's job is left alone),
        then remove its files: scratch files only when no job of ours can use them."""
        dom = self.hypervisor.find(self.domain_uuid)
        job = dom.backups.job_xml() if dom is not None and dom.is_active() else None
        if dom is not None and job is not None:
            if job_socket(job) != record.socket:
                raise UndoBlocked(
                    f"{self.domain_name}: a backup job that is not ours runs; our scratch "
                    f"files {', '.join(record.scratch)} are kept until it has ended"
                )
            if self.dry_run:
                self.steps.step(self.domain_name, f"would end the backup job on {record.socket}")
                return
            self.steps.step(self.domain_name, f"end the backup job on {record.socket}")
            dom.backups.abort()
        for path in (*record.scratch, record.socket):
            self._remove_job_file(path, socket=path == record.socket)

    def _stop_nbd_server(self, record: NbdServerRecord) -> None:
        """End the qemu-nbd serving on our socket (only one serving exactly there) and
        remove the socket."""
        if self.dry_run:
            if qemu_nbd.servers_on(record.socket):
                self.steps.step(self.domain_name, f"would end qemu-nbd on {record.socket}")
        elif qemu_nbd.stop_serving(record.socket):
            self.steps.step(self.domain_name, f"ended qemu-nbd on {record.socket}")
        self._remove_job_file(record.socket, socket=True)

    def _remove_job_file(self, path: str, *, socket: bool) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        expected = stat.S_ISSOCK(mode) if socket else stat.S_ISREG(mode)
        if not expected:
            raise UndoBlocked(f"{self.domain_name}: {path} is not what a backup job leaves")
        if self.dry_run:
            self.steps.step(self.domain_name, f"would remove {path}")
            return
        os.unlink(path)

    # -- freeze and run state ------------------------------------------------------------

    def _thaw(self) -> None:
        dom = self.hypervisor.find(self.domain_uuid)
        if dom is None or dom.state() != DomainState.RUNNING:
            return  # a guest that does not run has no frozen filesystems to thaw
        if self.dry_run:
            self.steps.step(self.domain_name, "would thaw the guest's filesystems")
            return
        try:
            thawed = dom.thaw()
        except AgentError as err:
            self.steps.warning(
                self.domain_name,
                f"cannot ask the guest agent to thaw the filesystems ({err.reason}); "
                "if the guest hangs, run 'virsh domfsthaw' once its agent answers",
            )
            return
        if thawed:
            self.steps.step(self.domain_name, f"thawed {thawed} guest filesystem(s)")

    def _restore_state(self, record: StateRecord) -> None:
        dom = self.hypervisor.find(self.domain_uuid)
        now = dom.state() if dom is not None else None
        if dom is None and record.restart:
            self.steps.warning(self.domain_name, "the domain is gone: it cannot be started")
        step = plan_state_undo(record, now)
        if step is None or dom is None:
            return
        text = {
            StateStep.RESUME: "resume the domain",
            StateStep.START: "start the domain again",
            StateStep.START_PAUSED: "start the domain again, paused",
        }[step]
        if self.dry_run:
            self.steps.step(self.domain_name, "would " + text)
            return
        self.steps.step(self.domain_name, text)
        if step == StateStep.RESUME:
            dom.resume()
        else:
            dom.start(paused=step == StateStep.START_PAUSED)


def _overlay_text(step: OverlayStep, record: OverlayRecord) -> str:
    return {
        OverlayStep.FINISH_JOB: f"finish merging {record.target}'s overlay and switch back "
        f"to {record.original}",
        OverlayStep.COMMIT_PIVOT: f"merge {record.target}'s overlay into {record.original} "
        "(blockcommit --active --pivot)",
        OverlayStep.COMMIT_OFFLINE: f"merge overlay {record.overlay} into {record.original} "
        "(qemu-img commit)",
        OverlayStep.REDEFINE: f"point {record.target} of the definition back to {record.original}",
        OverlayStep.DELETE: f"delete overlay {record.overlay}",
    }[step]
