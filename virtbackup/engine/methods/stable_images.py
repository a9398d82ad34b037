"""The snapshot, shutdown and offline image sources (see methods/image_source): make a
domain's images safe to read, and put everything back afterwards.

    with stable_images(conn, plan, context) as window:    # plan: core/planning
        for image in window.images:
            stream(image.path)           # the data path reads the file byte for byte

While the `with` lasts, every `image.path` (and every image of its backing chain) is
stable: nothing writes to it. How depends on the method:

- snapshot: one atomic, metadata-free, external disk-only snapshot puts a fresh qcow2
  overlay on top of every disk backed up (next to its image, or in `overlay_dir`); the
  guest writes go there and the original images become read-only backing files. With a
  guest agent that answers, libvirt freezes the guest's filesystems for the instant of
  the snapshot and thaws them (inside the daemon, so even if we die); without one the
  snapshot is crash-consistent and a warning says so. On exit each overlay is merged
  back into the image right below it (blockcommit --active --shallow), the disk is
  switched back to that image (pivot) and the overlay deleted. A paused domain stays
  paused throughout; a running domain that qemu paused on an I/O error (a full overlay
  filesystem) is resumed once it is back on its images.
- shutdown: the guest is asked to shut down (ACPI power button; then, if it has an
  agent, through the agent) and given `shutdown_timeout` seconds; on timeout the run
  fails (the default) or, with `force_off`, the domain is powered off. It is started
  again on exit whenever it was running before, also when the backup failed.
- offline: the domain is shut off; its images are read as they are, or, into the
  repository, served by qemu-nbd with their changes since the newest backup
  (methods/offline_changes).

Which method, which disks and whether the domain's state allows it are the plan's
decisions (core/planning); a source acts on them, re-checking under the domain's lock
only that the domain is still as planned.

Every change is journalled first (engine/runs/session), so `virtbackup clean` finishes the
undo after a kill -9 or a power loss.

Backing chains: the image read is the disk's top image (for a qcow2 with a backing
file, that qcow2 file as it is, with its reference to the backing file). The images
below it are listed in `backing_chain` and are just as stable during the `with`; the
overlay is merged into the top image only, never further down.
"""

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import Domain
from virtbackup.core.consistency_errors import (
    ConsistencyLost,
    OverlaySpaceError,
    QuiesceFailed,
    ShutdownTimeout,
    SnapshotFailed,
    UnsupportedDisk,
)
from virtbackup.core.errors import UsageError
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.overlays import overlay_path, snapshot_xml
from virtbackup.core.planning import DomainPlan
from virtbackup.core.progress import StepSink
from virtbackup.core.sizes import human_size
from virtbackup.core.undo import FrozenRecord, OverlayRecord, StateRecord
from virtbackup.engine.datapath.disk_backup import DiskSource
from virtbackup.engine.methods.image_source import (
    DEFAULT_CONTEXT,
    Consistency,
    ConsistencyOptions,
    Quiesce,
    SourceContext,
    StableImages,
    as_planned,
    may_freeze,
    planned_domain_session,
    read_offline,
)
from virtbackup.engine.methods.offline_changes import offline_changes
from virtbackup.engine.runs.session import Session
from virtbackup.engine.stores.change_base import ChangeBase

log = logging.getLogger(__name__)

# -- snapshot, shutdown, offline ---------------------------------------------------------


@contextmanager
def stable_images(
    conn: Hypervisor, plan: DomainPlan, context: SourceContext = DEFAULT_CONTEXT
) -> Iterator[StableImages]:
    """Lock the domain, finish what a dead run left on it, make the disks the plan backs
    up stable by its method (snapshot, shutdown or offline) for the `with` block, and
    undo it all on the way out, whatever the way out.

    Raises before the block: DomainChanged, LockHeld (exit 3), LeftoversRemain,
    UnsupportedDisk, OverlaySpaceError, SnapshotFailed, QuiesceFailed, ShutdownTimeout
    (all leave the domain as it was). On the way out: UndoIncomplete when something
    could not be undone (the journal keeps it for `virtbackup clean`), ConsistencyLost
    when a shut-off domain was started while being read; otherwise the block's own
    exception passes through.
    """
    options = context.options
    with planned_domain_session(conn, plan, context) as (dom, session):
        facts, disks = as_planned(session.hypervisor, dom, plan)
        found = _Found(dom, facts, disks, dom.config_xml() or dom.live_xml())
        if read_offline(plan, facts):
            with _offline(session, found, context.change_base) as window:
                yield window
        elif plan.method is Method.SNAPSHOT:
            with _snapshot(session, found, options) as window:
                yield window
        elif plan.method is Method.SHUTDOWN:
            with _shutdown(session, found, options) as window:
                yield window
        else:
            raise UsageError(f"method {plan.method} is not handled by the consistency layer")


@dataclass(frozen=True)
class _Found:
    """The planned domain under its lock as it is now, the disks to read and its
    definition before anything is changed."""

    dom: Domain
    facts: DomainFacts
    disks: list[DiskFacts]
    definition: str

    def window(
        self, method: Method, consistency: Consistency, notes: Sequence[str] = ()
    ) -> StableImages:
        images = tuple(
            DiskSource(
                target=disk.target,
                path=Path(disk.path or ""),
                format=disk.format or "raw",
                virtual_size=disk.virtual_size or 0,
                backing_chain=disk.backing_chain,
            )
            for disk in self.disks
        )
        name, uuid = self.facts.name, self.facts.uuid
        return StableImages(
            name, uuid, method, consistency, self.definition, images, notes=tuple(notes)
        )


# -- offline -------------------------------------------------------------------------------


@contextmanager
def _offline(
    session: Session, found: _Found, base: ChangeBase | str | None
) -> Iterator[StableImages]:
    """The images read directly; in the repository, qcow2 images whose bitmaps tell
    the changes since the newest backup are served with them (methods/offline_changes)."""
    served, notes = offline_changes(
        session, found.dom, found.facts, found.disks, found.definition, base
    )
    if served is None:
        yield found.window(Method.OFFLINE, Consistency.OFFLINE, notes)
    else:
        with served as window:
            yield window
    _check_still_off(found.dom, found.facts.name)


def _check_still_off(dom: Domain, name: str) -> None:
    if dom.is_active():
        raise ConsistencyLost(
            f"{name} was started while its images were being read: this backup may be inconsistent",
            "run the backup again",
        )


# -- snapshot ------------------------------------------------------------------------------


@contextmanager
def _snapshot(
    session: Session, found: _Found, options: ConsistencyOptions
) -> Iterator[StableImages]:
    dom, facts, disks = found.dom, found.facts, found.disks
    records = [_overlay_record(session, facts, disk, options) for disk in disks]
    check_overlay_space(facts.name, [Path(r.overlay) for r in records], options.overlay_min_free)
    xml = snapshot_xml(
        f"virtbackup-{session.run_id}",
        {r.target: r.overlay for r in records},
        [disk.target for disk in facts.disks if disk.target != "?"],
    )
    steps = session.steps
    with session.scope():
        # First pushed, last undone: resume only once every disk is back on its image.
        session.register(StateRecord(was=facts.state, restart=False))
        for record in records:
            session.register(record)
        consistency = _create_overlays(session, dom, facts, xml, options.quiesce)
        _check_on_overlays(dom, facts.name, records)
        steps.step(
            facts.name,
            f"{consistency.value} snapshot: "
            + ", ".join(f"{r.target} writes go to {r.overlay}" for r in records),
        )
        yield found.window(Method.SNAPSHOT, consistency)


def _overlay_record(
    session: Session, facts: DomainFacts, disk: DiskFacts, options: ConsistencyOptions
) -> OverlayRecord:
    original = disk.path or ""
    if disk.source_type == "volume":
        # Merging back live works, but putting a volume source back into a definition
        # after a crash (clean, domain shut off) is not done yet.
        raise UnsupportedDisk(
            f"{facts.name} {disk.target} is the storage volume {disk.pool}/{disk.volume}: "
            "the snapshot method handles file and block disks only",
            "use --method shutdown, or a file disk",
        )
    if disk.source_type == "block" and options.overlay_dir is None:
        raise UnsupportedDisk(
            f"{facts.name} {disk.target} is the block device {original}: its overlay "
            "cannot go next to it",
            "set an overlay directory (overlay_dir, --overlay-dir)",
        )
    overlay = str(
        overlay_path(original, disk.target, facts.uuid, session.run_id, options.overlay_dir)
    )
    if os.path.lexists(overlay):
        raise SnapshotFailed(f"{overlay} exists already: it is not ours to overwrite")
    return OverlayRecord(
        target=disk.target,
        original=original,
        original_type=disk.source_type,
        original_format=disk.format or "raw",
        overlay=overlay,
    )


def check_overlay_space(domain: str, overlays: Sequence[Path], min_free: int) -> None:
    """Each directory must be writable and have `min_free` bytes per overlay put there."""
    wanted: dict[Path, int] = {}
    for overlay in overlays:
        wanted[overlay.parent] = wanted.get(overlay.parent, 0) + min_free
    for directory, need in wanted.items():
        try:
            st = os.statvfs(directory)
        except OSError as err:
            raise OverlaySpaceError(
                f"cannot use {directory} for the overlays of {domain}: {err.strerror}",
                "create it or choose another overlay directory",
            ) from None
        if not os.access(directory, os.W_OK) or st.f_flag & os.ST_RDONLY:
            raise OverlaySpaceError(
                f"cannot write the overlays of {domain} into {directory}",
                "choose a writable overlay directory",
            )
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise OverlaySpaceError(
                f"only {human_size(free)} free in {directory} for the overlays of {domain}, "
                f"{human_size(need)} wanted",
                "free space there or choose an overlay directory with room "
                "(the guest's writes during the backup go there)",
            )


def _create_overlays(
    session: Session, dom: Domain, facts: DomainFacts, xml: str, quiesce: Quiesce
) -> Consistency:
    steps = session.steps
    if may_freeze(steps, dom, facts, quiesce, "snapshot"):
        try:
            with session.scope():  # the thaw is undone (run) however the snapshot ends
                session.register(FrozenRecord())
                dom.create_overlays(xml, quiesce=True)
            return Consistency.QUIESCED
        except SnapshotFailed as err:
            if quiesce == Quiesce.REQUIRE:
                raise QuiesceFailed(
                    f"cannot freeze the filesystems of {facts.name}: {err}"
                ) from None
            steps.warning(
                facts.name, f"quiesced snapshot failed ({err}): taking a crash-consistent one"
            )
    dom.create_overlays(xml, quiesce=False)
    return Consistency.CRASH


def _check_on_overlays(dom: Domain, name: str, records: Sequence[OverlayRecord]) -> None:
    """libvirt says the snapshot is made: make sure every disk really writes to our overlay
    (the original is then a read-only backing file and safe to read)."""
    disks = dom.live_disks()
    for record in records:
        disk = disks.get(record.target)
        if (
            disk is None
            or disk.path != record.overlay
            or disk.backing_chain[:1] != (record.original,)
        ):
            raise SnapshotFailed(
                f"{name} {record.target} is not on the new overlay after the snapshot "
                f"(source {disk.path if disk else None})"
            )


# -- shutdown ------------------------------------------------------------------------------


@contextmanager
def _shutdown(
    session: Session, found: _Found, options: ConsistencyOptions
) -> Iterator[StableImages]:
    with session.scope():
        # Registered before asking: a guest that goes off while we wait is started again.
        session.register(StateRecord(was=DomainState.RUNNING, restart=True))
        _shut_down(session.steps, found.dom, found.facts.name, options)
        yield found.window(Method.SHUTDOWN, Consistency.OFFLINE)
        _check_still_off(found.dom, found.facts.name)


def _shut_down(steps: StepSink, dom: Domain, name: str, options: ConsistencyOptions) -> None:
    """Shut the guest down gracefully within the timeout, or force it off, or fail."""
    off = {DomainState.SHUTOFF}
    timeout = options.shutdown_timeout
    agent = dom.agent_connected()
    steps.step(name, "shutting down (ACPI power button)")
    asked = dom.request_shutdown("acpi")
    # With an agent as a second way, the ACPI button gets half the time.
    first = timeout / 2 if agent else timeout
    if asked and dom.wait_state(off, first):
        steps.step(name, "shut off")
        return
    if agent:
        steps.step(name, "no reaction to the power button: shutting down through the guest agent")
        if dom.request_shutdown("agent") and dom.wait_state(off, timeout - first):
            steps.step(name, "shut off")
            return
    if dom.state() in off:
        return
    if options.force_off:
        steps.warning(name, f"did not shut down within {timeout:.0f}s: forcing it off")
        dom.destroy()
        return
    raise ShutdownTimeout(
        f"{name} did not shut down within {timeout:.0f}s; the backup was not made",
        "allow more time (shutdown timeout) or let virtbackup force it off",
    )
