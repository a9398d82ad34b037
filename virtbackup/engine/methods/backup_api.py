"""The backup-API image source (see methods/image_source): libvirt's pull backup job
serves each disk's view at one instant over NBD, and the data path reads it there.

    with backup_api_images(conn, plan, context) as window:
        for image in window.images:      # image.nbd: the job's socket and export
            read(image)

No overlay, no block commit, no pivot: qemu keeps the instant with copy-before-write
into a scratch file per disk (next to its image, or in `overlay_dir`), and the guest
writes on to its own image throughout. With a guest agent that answers, the guest's
filesystems are frozen for the job's start and thawed right after (the same --quiesce
rules as the snapshot method). On the way out, whatever the way out, the job is ended
and its scratch files and socket removed; the job is journalled first, so `clean` (and
the next run) ends a job a killed run left behind (engine/runs/undo).

What is read is the guest's view of the disk (its whole backing chain, flattened): the
backup stores it as a raw disk. qemu serves any disk it has open, whatever the storage
behind it: a file, a block device, a network source (NBD, iSCSI, RBD, ...), which is read
through the domain's own qemu and its own credentials, never named by us to a program.
Changes are tracked (checkpoint bitmaps) on qcow2 disks only; the others are read in full.
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import AgentError, Domain
from virtbackup.adapters.nbd_export import dirty_bitmap
from virtbackup.core.backup_job import (
    KEEP_CHECKPOINTS,
    checkpoint_name,
    checkpoint_xml,
    checkpoints_to_delete,
    pull_backup_xml,
    scratch_path,
    socket_path,
)
from virtbackup.core.consistency_errors import QuiesceFailed, SnapshotFailed, UnsupportedDisk
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.model import DiskFacts, DomainFacts, Method
from virtbackup.core.planning import DomainPlan, backup_api_problem
from virtbackup.core.progress import StepSink
from virtbackup.core.undo import BackupJobRecord, FrozenRecord
from virtbackup.engine.datapath.disk_backup import DiskSource, EarlierDisk
from virtbackup.engine.methods.image_source import (
    DEFAULT_CONTEXT,
    Consistency,
    Quiesce,
    SourceContext,
    StableImages,
    as_planned,
    may_freeze,
    planned_domain_session,
    served_over_nbd,
)
from virtbackup.engine.methods.stable_images import check_overlay_space
from virtbackup.engine.runs.session import Session
from virtbackup.engine.stores.change_base import changes_since


@contextmanager
def backup_api_images(
    conn: Hypervisor, plan: DomainPlan, context: SourceContext = DEFAULT_CONTEXT
) -> Iterator[StableImages]:
    """Lock the domain, finish what a dead run left on it, start a pull backup job of
    the disks the plan backs up for the `with` block, and end it on the way out.

    Raises before the block: DomainChanged, LockHeld (exit 3), LeftoversRemain,
    UnsupportedDisk, OverlaySpaceError, SnapshotFailed, QuiesceFailed, HypervisorError
    (all leave the domain as it was). On the way out: UndoIncomplete when the job could
    not be ended (the journal keeps it for `virtbackup clean`)."""
    options = context.options
    with planned_domain_session(conn, plan, context) as (dom, session):
        facts, disks = as_planned(session.hypervisor, dom, plan)
        problem = backup_api_problem(facts)
        if problem:
            raise UnsupportedDisk(f"{facts.name}: {problem}", "use --method snapshot")
        definition = dom.config_xml() or dom.live_xml()
        socket = str(socket_path(facts.uuid, session.run_id))
        scratch = {
            disk.target: str(
                scratch_path(
                    disk.path if disk.source_type == "file" else None,
                    disk.target,
                    facts.uuid,
                    session.run_id,
                    options.overlay_dir,
                )
            )
            for disk in disks
        }
        check_overlay_space(
            facts.name, [Path(p) for p in scratch.values()], options.overlay_min_free
        )
        for path in (socket, *scratch.values()):
            if os.path.lexists(path):
                raise SnapshotFailed(f"{path} exists already: it is not ours to overwrite")
        tracked = [disk for disk in disks if disk.tracks_changes]
        since, earlier, notes = changes_since(
            context.change_base, tracked, dom.backups.checkpoint_times()
        )
        all_targets = [disk.target for disk in facts.disks if disk.target != "?"]
        # no checkpoint when no disk can keep its bitmap
        checkpoint = checkpoint_name(session.run_id) if tracked else None
        targets = (all_targets, {disk.target for disk in tracked})
        job = _Job(dom, socket, scratch, targets, checkpoint, since, notes)
        with session.scope():
            session.register(BackupJobRecord(socket, tuple(scratch.values())))
            consistency = _begin(session, dom, facts, job.start, options.quiesce)
            if not job.incremental:
                earlier = {}
            session.steps.step(
                facts.name,
                f"{consistency.value} backup job, checkpoint {checkpoint or 'none'}: "
                + ", ".join(
                    f"{target} changes since {since}" if target in earlier else f"{target} in full"
                    for target in scratch
                ),
            )
            images = tuple(_served(disk, Path(socket), earlier.get(disk.target)) for disk in disks)
            yield StableImages(
                facts.name,
                facts.uuid,
                Method.BACKUP_API,
                consistency,
                definition,
                images,
                checkpoint=checkpoint,
                notes=tuple(notes),
            )
        _prune_checkpoints(session.steps, dom, facts.name)


class _Job:
    """How the job is begun: with the changes since the checkpoint when there is one and
    libvirt can tell them (its bitmaps intact), else every disk in full; both make the
    checkpoint of this instant."""

    def __init__(
        self,
        dom: Domain,
        socket: str,
        scratch: dict[str, str],
        targets: tuple[list[str], set[str]],
        checkpoint: str | None,
        since: str | None,
        notes: list[str],
    ) -> None:
        self.dom = dom
        self.socket = socket
        self.scratch = scratch
        # every disk of the domain, and those read whose changes are tracked
        self.all_targets, self.tracked = targets
        self.checkpoint = checkpoint
        self.since = since
        self.notes = notes
        self.incremental = False

    @property
    def checkpoint_xml(self) -> str | None:
        if self.checkpoint is None:
            return None
        return checkpoint_xml(self.checkpoint, self.tracked, self.all_targets)

    def start(self) -> None:
        if self.since is not None:
            untracked = set(self.scratch) - self.tracked
            xml = pull_backup_xml(
                self.socket, self.scratch, self.all_targets, self.since, untracked
            )
            try:
                self.dom.backups.begin_pull(xml, self.checkpoint_xml)
                self.incremental = True
                return
            except VirtbackupError as err:
                self.notes.append(
                    f"read in full: libvirt cannot tell the changes since {self.since} ({err})"
                )
        xml = pull_backup_xml(self.socket, self.scratch, self.all_targets)
        self.dom.backups.begin_pull(xml, self.checkpoint_xml)


def _prune_checkpoints(steps: StepSink, dom: Domain, name: str) -> None:
    """Keep only our newest checkpoints (another tool's are not ours to delete); one
    that cannot be deleted now is tried again after the next backup."""
    try:
        for old in checkpoints_to_delete(dom.backups.checkpoints(), KEEP_CHECKPOINTS):
            dom.backups.delete_checkpoint(old)
    except VirtbackupError as err:
        steps.warning(name, f"old checkpoints are kept for now: {err}")


def _begin(
    session: Session, dom: Domain, facts: DomainFacts, start: Callable[[], None], quiesce: Quiesce
) -> Consistency:
    """Start the job, with the guest's filesystems frozen for its start when they can be."""
    if may_freeze(session.steps, dom, facts, quiesce, "backup job"):
        try:
            with session.scope():  # thawed as soon as the job has started (or failed)
                session.register(FrozenRecord())
                dom.freeze()
                start()
            return Consistency.QUIESCED
        except AgentError as err:
            if quiesce == Quiesce.REQUIRE:
                raise QuiesceFailed(
                    f"cannot freeze the filesystems of {facts.name}: {err}"
                ) from None
            session.steps.warning(
                facts.name, f"freezing failed ({err.reason}): the backup job is crash-consistent"
            )
    start()
    return Consistency.CRASH


def _served(disk: DiskFacts, socket: Path, earlier: EarlierDisk | None) -> DiskSource:
    """A disk as the job serves it."""
    changes = None if earlier is None else dirty_bitmap(disk.target)
    return served_over_nbd(disk, socket, changes, earlier)
