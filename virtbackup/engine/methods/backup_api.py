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
backup stores it as a raw disk. Only qcow2 files are served (planning decides).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import AgentError, Domain
from virtbackup.core.backup_job import pull_backup_xml, scratch_path, socket_path
from virtbackup.core.consistency_errors import QuiesceFailed, SnapshotFailed, UnsupportedDisk
from virtbackup.core.model import DiskFacts, DomainFacts, Method
from virtbackup.core.planning import DomainPlan, backup_api_problem
from virtbackup.core.undo import BackupJobRecord, FrozenRecord
from virtbackup.engine.datapath.disk_backup import DiskSource
from virtbackup.engine.datapath.nbd_source import NbdLocation
from virtbackup.engine.methods.image_source import (
    DEFAULT_CONTEXT,
    Consistency,
    Quiesce,
    SourceContext,
    StableImages,
    as_planned,
    may_freeze,
    planned_domain_session,
)
from virtbackup.engine.methods.stable_images import check_overlay_space
from virtbackup.engine.runs.session import Session


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
        problem = backup_api_problem(facts, disks)
        if problem:
            raise UnsupportedDisk(f"{facts.name}: {problem}", "use --method snapshot")
        definition = dom.config_xml() or dom.live_xml()
        socket = str(socket_path(facts.uuid, session.run_id))
        scratch = {
            disk.target: str(
                scratch_path(
                    disk.path or "", disk.target, facts.uuid, session.run_id, options.overlay_dir
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
        xml = pull_backup_xml(
            socket, scratch, [disk.target for disk in facts.disks if disk.target != "?"]
        )
        with session.scope():
            session.register(BackupJobRecord(socket, tuple(scratch.values())))
            consistency = _begin(session, dom, facts, xml, options.quiesce)
            session.steps.step(
                facts.name,
                f"{consistency.value} backup job: "
                + ", ".join(f"{target} served at its instant" for target in scratch),
            )
            images = tuple(_served(disk, Path(socket)) for disk in disks)
            yield StableImages(
                facts.name, facts.uuid, Method.BACKUP_API, consistency, definition, images
            )


def _begin(
    session: Session, dom: Domain, facts: DomainFacts, xml: str, quiesce: Quiesce
) -> Consistency:
    """Start the job, with the guest's filesystems frozen for its start when they can be."""
    if may_freeze(session.steps, dom, facts, quiesce, "backup job"):
        try:
            with session.scope():  # thawed as soon as the job has started (or failed)
                session.register(FrozenRecord())
                dom.freeze()
                dom.backups.begin_pull(xml, None)
            return Consistency.QUIESCED
        except AgentError as err:
            if quiesce == Quiesce.REQUIRE:
                raise QuiesceFailed(
                    f"cannot freeze the filesystems of {facts.name}: {err}"
                ) from None
            session.steps.warning(
                facts.name, f"freezing failed ({err.reason}): the backup job is crash-consistent"
            )
    dom.backups.begin_pull(xml, None)
    return Consistency.CRASH


def _served(disk: DiskFacts, socket: Path) -> DiskSource:
    """A disk as the job serves it: the guest's view, stored as a raw disk."""
    return DiskSource(
        target=disk.target,
        path=Path(disk.path or ""),
        format="raw",
        virtual_size=disk.virtual_size or 0,
        nbd=NbdLocation(socket, disk.target),
    )
