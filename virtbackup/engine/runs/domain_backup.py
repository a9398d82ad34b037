"""Back up one domain: its plan goes through the method's image source into the data path.

    plan (core/planning) -> image source of plan.method (lock, re-check, snapshot/LVM/
                            shutdown/offline, undo) -> skip-free (optional)
                         -> back_up_disks (streams into the store) -> DomainOutcome

The plan has decided everything about the domain and its disks (method, state,
unreadable, left out); this module acts on it. runs/domain_loop runs the domains.

One domain's failure is its outcome, never an exception that stops the others; only an
interruption (SIGINT, SIGTERM, SIGHUP) ends the run, after the domain at hand is put back.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from virtbackup.adapters.age import Recipients
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.core.config import DomainSettings
from virtbackup.core.errors import ExitCode, Interrupted, LockHeld, VirtbackupError
from virtbackup.core.manifest import LAYOUT_REPOSITORY, LAYOUT_STREAM, LeftOutDisk, Manifest
from virtbackup.core.model import Method
from virtbackup.core.planning import DomainPlan, PlanOptions
from virtbackup.core.progress import ProgressSink, StepSink
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import back_up_disks
from virtbackup.engine.methods.backup_api import backup_api_images
from virtbackup.engine.methods.image_source import ConsistencyOptions, ImageSource, SourceContext
from virtbackup.engine.methods.lvm import LvmSource
from virtbackup.engine.methods.skip_free import SkipFree, compacted
from virtbackup.engine.methods.stable_images import stable_images
from virtbackup.engine.methods.trim import trim_before_backup
from virtbackup.engine.stores.change_base import ChangeBase, keep_sealed_base, newest_base
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.remote import RemoteStore, ship
from virtbackup.engine.stores.store import Store

log = logging.getLogger(__name__)


class Result(StrEnum):
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a signal ended the run at this domain or before it
    LOCKED = "locked"  # another run holds the domain
    SKIPPED = "skipped"  # the plan backs nothing up (e.g. a crashed domain, only cdroms)
    INCOMPLETE = "incomplete"  # a disk that cannot be backed up is missing (see planning)


@dataclass(frozen=True)
class DomainOutcome:
    domain: str
    result: Result
    message: str  # the reason for a skip or failure; the consistency reached when ok
    method: str | None = None
    disks: int = 0
    read: int = 0  # uncompressed bytes of the disks
    stored: int = 0  # bytes written to the store
    seconds: float = 0.0
    backup: Path | str | None = None  # a directory, or a remote location (--remote-only)
    warnings: tuple[str, ...] = ()
    reclaimed: int | None = None  # bytes --trim freed in the host images; None: no trim
    offsite: str | None = None  # None: no remote; "copied", "streamed" or "failed"
    left_out: tuple[str, ...] = ()  # "target: reason" of disks missing from the backup
    excluded: tuple[str, ...] = ()  # targets left out by exclude_disks


@dataclass(frozen=True)
class BackupRunOptions:
    consistency: ConsistencyOptions = field(default_factory=ConsistencyOptions)
    writer: WriterOptions = field(default_factory=WriterOptions)
    state_dir: Path | None = None
    trim: bool = False  # fstrim a running guest through its agent before the backup
    skip_free: SkipFree | None = None  # stream only what the guest filesystems use
    encrypt_to: Recipients | None = None  # age-encrypt every file of the backup
    sign_with: Path | None = None  # OpenSSH private key that signs the metadata files
    offsite: RemoteStore | None = None  # copy (or stream, when only) to an rclone remote
    layout: str = LAYOUT_STREAM  # stream files, or chunks in DEST's repository


EXCLUDE_HINT = 'back it up elsewhere, or leave it out by name (exclude_disks = ["TARGET"])'


@dataclass(frozen=True)
class DomainJob:
    """One domain of a run: its plan, how to back it up, and its settings (retention).
    With `plan_options`, the plan is made again when the domain's turn comes (see
    runs/domain_loop)."""

    plan: DomainPlan
    options: BackupRunOptions
    settings: DomainSettings = field(default_factory=DomainSettings)
    plan_options: PlanOptions | None = None


def image_source(method: Method, lvm: ImageSource) -> ImageSource:
    """Where a method reads its images from: the run's LVM snapshots, libvirt's backup
    job, or libvirt (snapshot, shutdown, offline)."""
    if method is Method.LVM:
        return lvm
    return backup_api_images if method is Method.BACKUP_API else stable_images


def back_up_domain(
    conn: Hypervisor,
    plan: DomainPlan,
    store: LocalStore,
    options: BackupRunOptions,
    progress: ProgressSink,
    steps: StepSink,
    lvm: ImageSource | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> DomainOutcome:
    """Run one domain's plan. `lvm` is the run's LVM source (snapshots shared by the
    domains of a run); without it the domain takes its own."""
    name = plan.domain.name
    started = clock()
    warnings = tuple(f"{d.disk.target}: {d.reason}" for d in plan.warnings)
    method = plan.method.value if plan.method else None
    left_out = tuple(f"{d.disk.target}: {d.reason}" for d in plan.left_out)
    excluded = tuple(d.disk.target for d in plan.excluded)
    if plan.unreadable:
        problem = "; ".join(f"{d.disk.target}: {d.reason}" for d in plan.unreadable)
        return DomainOutcome(name, Result.FAILED, problem, method, warnings=warnings)
    if plan.nothing_but_left_out:
        message = f"nothing backed up: {'; '.join(left_out)}; {EXCLUDE_HINT}"
        return DomainOutcome(
            name, Result.INCOMPLETE, message, None, warnings=warnings, left_out=left_out
        )
    if plan.method is None:
        return DomainOutcome(name, Result.SKIPPED, plan.reason, warnings=warnings)
    if not plan.backed_up:
        return DomainOutcome(name, Result.SKIPPED, "no disk to back up", warnings=warnings)

    reclaimed = None
    if options.trim:
        trim = trim_before_backup(conn, plan, steps)
        warnings, reclaimed = warnings + trim.warnings, trim.reclaimed
    source = image_source(plan.method, lvm or LvmSource())
    # --remote-only: the streams go to the remote store instead of DEST
    streamed = options.offsite is not None and options.offsite.only
    target: Store = options.offsite if options.offsite and streamed else store
    try:
        context = SourceContext(
            options.consistency, options.state_dir, steps, _change_base(plan, store, options)
        )
        with (
            source(conn, plan, context) as window,
            compacted(window, options.skip_free, steps) as compact,
        ):
            result = back_up_disks(
                target,
                window.domain_name,
                window.domain_uuid,
                window.definition_xml,
                window.method.value,
                compact.sources,
                window.guard(progress),
                options.writer,
                encrypt_to=options.encrypt_to,
                sign_with=options.sign_with,
                left_out=[LeftOutDisk(d.disk.target, d.reason) for d in plan.disks if not d.backup],
                layout=options.layout,
                state_dir=options.state_dir,
                checkpoint=window.checkpoint,
            )
    except LockHeld as err:
        return DomainOutcome(name, Result.LOCKED, str(err), plan.method.value, warnings=warnings)
    except Interrupted:
        raise  # SIGINT/SIGTERM end the run, not just this domain
    except VirtbackupError as err:
        log.error("%s: %s", name, err)
        return DomainOutcome(
            name,
            Result.FAILED,
            str(err),
            plan.method.value,
            seconds=clock() - started,
            warnings=warnings,
        )
    if not streamed:
        warnings += _keep_sealed_base(store, options, result.path, result.manifest)
    disks = result.manifest.disks
    outcome = DomainOutcome(
        name,
        Result.OK,
        window.consistency.value,
        window.method.value,
        disks=len(disks),
        read=sum(d.byte_size for d in disks),
        stored=sum(d.stored_size for d in disks),
        seconds=clock() - started,
        backup=result.path,
        warnings=warnings + window.notes + compact.warnings + result.notes,
        reclaimed=reclaimed,
        offsite="streamed" if streamed else None,
        left_out=left_out,
        excluded=excluded,
    )
    if left_out:
        message = f"left out {'; '.join(left_out)}; {EXCLUDE_HINT}"
        outcome = replace(outcome, result=Result.INCOMPLETE, message=message)
    if options.offsite is None or streamed:
        return outcome
    try:
        ship(options.offsite, store, name, resolve_state_dir(options.state_dir))
    except Interrupted:
        raise  # SIGINT/SIGTERM end the run, not just this domain
    except VirtbackupError as err:
        log.error("%s: %s", name, err)
        return replace(
            outcome,
            result=Result.FAILED,
            message=f"backup kept at {result.path} but not copied offsite: {err}",
            offsite="failed",
        )
    return replace(outcome, offsite="copied")


def _change_base(
    plan: DomainPlan, store: LocalStore, options: BackupRunOptions
) -> ChangeBase | str | None:
    """What the backup API, or the offline read of a shut-off domain's qcow2 images,
    reads the changes since: only into the repository, whose chunks the unchanged parts
    of the disks reuse (a stream backup is read whole)."""
    if plan.method is Method.LVM or options.layout != LAYOUT_REPOSITORY:
        return None
    return newest_base(
        store, plan.domain.name, plan.domain.uuid, resolve_state_dir(options.state_dir)
    )


def _keep_sealed_base(
    store: LocalStore, options: BackupRunOptions, backup: Path | str, manifest: Manifest
) -> tuple[str, ...]:
    """After an encrypted backup with a checkpoint, the host's copy of its manifest, so
    that the next backup can read only the changes (see engine/stores/change_base)."""
    if options.encrypt_to is None or manifest.checkpoint is None or not isinstance(backup, Path):
        return ()
    try:
        keep_sealed_base(resolve_state_dir(options.state_dir), store, backup, manifest)
    except (OSError, VirtbackupError) as err:
        return (f"the next backup reads in full: its base cannot be recorded ({err})",)
    return ()


NOT_STARTED = "not started: the run was interrupted"


def interrupted_outcomes(names: Sequence[str], err: Interrupted) -> list[DomainOutcome]:
    """A signal ended the run at the first of `names` (put back by then); the others
    were not started. Each is named in the summary, none left out silently."""
    return [
        DomainOutcome(name, Result.INTERRUPTED, NOT_STARTED if index else str(err))
        for index, name in enumerate(names)
    ]


def exit_code(outcomes: Sequence[DomainOutcome]) -> ExitCode:
    """130 when a signal ended the run; 1 when anything failed or is incomplete; 3 when
    the only trouble was a lock held by another run."""
    results = {o.result for o in outcomes}
    if Result.INTERRUPTED in results:
        return ExitCode.INTERRUPTED
    if Result.FAILED in results or Result.INCOMPLETE in results:
        return ExitCode.FAILED
    if Result.LOCKED in results:
        return ExitCode.LOCKED
    return ExitCode.OK
