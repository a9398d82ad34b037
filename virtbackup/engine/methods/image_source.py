"""What every method's image source is: the ImageSource protocol, its options and the
window it yields, and the steps every source takes before it changes anything.

    with source(conn, plan, SourceContext(options, state_dir, steps)) as window:
        # plan: core/planning
        for image in window.images:
            stream(image.path)

Sources: methods/stable_images (snapshot, shutdown, offline) and methods/lvm (LVM
snapshots); methods/skip_free works on the window of any of them. Each source looks the
planned domain up by uuid, takes its session (lock, journal, undo stack; a dead run's
changes undone first) and then checks that the domain is still as planned.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import Domain
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.core.config import SnapshotSize
from virtbackup.core.consistency_errors import DomainChanged, QuiesceFailed
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.planning import DomainPlan
from virtbackup.core.progress import ProgressSink, StepSink
from virtbackup.engine.datapath.disk_backup import DiskSource, EarlierDisk
from virtbackup.engine.datapath.nbd_source import NbdLocation
from virtbackup.engine.runs.session import Session
from virtbackup.engine.stores.change_base import ChangeBase

MiB = 1024 * 1024


class Quiesce(StrEnum):
    AUTO = "auto"  # freeze through the guest agent when one answers, else crash-consistent
    REQUIRE = "require"  # fail when the guest cannot be frozen
    NEVER = "never"  # crash-consistent always


class Consistency(StrEnum):
    QUIESCED = "quiesced"  # filesystems frozen through the guest agent for the snapshot
    CRASH = "crash-consistent"  # as if the power had been cut at the snapshot
    OFFLINE = "offline"  # the domain was shut off


@dataclass(frozen=True)
class ConsistencyOptions:
    overlay_dir: Path | None = None  # None: each overlay next to its image
    overlay_min_free: int = 512 * MiB  # free space an overlay's filesystem needs per overlay
    quiesce: Quiesce = Quiesce.AUTO
    commit_timeout: float = 3600.0  # per disk, to merge an overlay back
    shutdown_timeout: float = 300.0
    force_off: bool = False  # power the domain off when it does not shut down in time
    snapshot_size: SnapshotSize = SnapshotSize(percent=10.0)  # lvm: copy-on-write room per LV


@dataclass(frozen=True)
class StableImages:
    domain_name: str
    domain_uuid: str
    method: Method  # the plan's method: what was done
    consistency: Consistency
    definition_xml: str  # the domain's definition before anything was changed (domain.xml)
    images: tuple[DiskSource, ...]  # what to read, byte for byte: each disk's top image
    # the checkpoint of the images' instant (backup-api)
    checkpoint: str | None = field(default=None, kw_only=True)
    # for the summary: e.g. why a disk is read in full
    notes: tuple[str, ...] = field(default=(), kw_only=True)

    def guard(self, progress: ProgressSink) -> ProgressSink:
        """The sink to give the data path; a method may watch the streams through it
        (lvm: stop at once, and before the commit, when a snapshot overflowed)."""
        return progress


@dataclass(frozen=True)
class SourceContext:
    """What every image source is given besides the domain and its plan: the method's
    options, the state directory (journal, locks; None: the default), the sink for
    the steps it takes (None: the log) and, for the backup API, the change base."""

    options: ConsistencyOptions = ConsistencyOptions()
    state_dir: Path | None = None
    steps: StepSink | None = None
    # backup-api: the backup to read the changes since, or why there is none to
    # (None: changes are not asked for, e.g. stream backups)
    change_base: ChangeBase | str | None = None


DEFAULT_CONTEXT = SourceContext()


class ImageSource(Protocol):
    """Where a method reads a planned domain's images from, for the `with` block: the
    domain locked, its disks `plan.backed_up` stable, everything put back on the way out.
    `stable_images` (snapshot, shutdown, offline) and the LVM method's source implement
    it; skip-free (methods/skip_free) works on the window of any of them."""

    def __call__(
        self, conn: Hypervisor, plan: DomainPlan, context: SourceContext = DEFAULT_CONTEXT
    ) -> AbstractContextManager[StableImages]: ...


@contextmanager
def planned_domain_session(
    conn: Hypervisor, plan: DomainPlan, context: SourceContext
) -> Iterator[tuple[Domain, Session]]:
    """The planned domain, by uuid (a domain defined anew under the same name since is
    another domain), and its session: its lock, its journal, its undo stack."""
    dom = conn.find(plan.domain.uuid)
    if dom is None:
        raise DomainChanged(f"{plan.domain.name} no longer exists", "nothing of it was backed up")
    with Session(
        resolve_state_dir(context.state_dir),
        conn,
        dom.uuid,
        dom.name,
        steps=context.steps,
        commit_timeout=context.options.commit_timeout,
    ) as session:
        yield dom, session


def as_planned(
    conn: Hypervisor, dom: Domain, plan: DomainPlan
) -> tuple[DomainFacts, list[DiskFacts]]:
    """The domain and the disks to read as they are now, under its lock, once a dead
    run's changes are undone. The plan was made from what discovery saw before the lock:
    a state that changed since (started, paused) would have the method act on a domain
    it was not chosen for, so the run stops. One change is safe and common in a long
    nightly run: a running domain that has shut off since is read as it is, offline
    (see read_offline). A disk's image may have changed since (a dead run's overlay
    merged back just now): the image read is the current one.
    """
    facts = conn.facts(dom)
    name = plan.domain.name
    if facts.state is not plan.domain.state and not read_offline(plan, facts):
        raise DomainChanged(
            f"{name} was {plan.domain.state} when the backup was planned and is now "
            f"{facts.state}: nothing of it was changed",
            "run the backup again",
        )
    now = {disk.target: disk for disk in facts.disks}
    disks = []
    for planned in plan.backed_up:
        disk = now.get(planned.disk.target)
        if disk is None or disk.location is None or disk.source_type != planned.disk.source_type:
            raise DomainChanged(
                f"{name} {planned.disk.target} is not the disk the backup was planned for",
                "run the backup again",
            )
        disks.append(disk)
    return facts, disks


def read_offline(plan: DomainPlan, now: DomainFacts) -> bool:
    """Whether the images are read directly: the domain is shut off now (nothing writes
    to its images), planned so or planned for a snapshot or a shutdown."""
    return now.state is DomainState.SHUTOFF and plan.method in (
        Method.OFFLINE,
        Method.SNAPSHOT,
        Method.SHUTDOWN,
    )


def may_freeze(
    steps: StepSink, dom: Domain, facts: DomainFacts, quiesce: Quiesce, what: str
) -> bool:
    """Whether to freeze the guest's filesystems for the instant of `what` (a snapshot,
    a backup job): with --quiesce never, no; without an agent that can answer (paused,
    none connected) the instant is crash-consistent with a warning, or with --quiesce
    require QuiesceFailed."""
    if quiesce == Quiesce.NEVER:
        return False
    if facts.state == DomainState.RUNNING and dom.agent_connected():
        return True
    why = (
        "it is paused"
        if facts.state == DomainState.PAUSED
        else "no guest agent is connected (install and start qemu-guest-agent in the guest)"
    )
    if quiesce == Quiesce.REQUIRE:
        raise QuiesceFailed(f"cannot freeze the filesystems of {facts.name}: {why}")
    steps.warning(facts.name, f"crash-consistent {what}: {why}")
    return False


def served_over_nbd(
    disk: DiskFacts, socket: Path, changes: str | None, earlier: EarlierDisk | None
) -> DiskSource:
    """A disk served over NBD as the guest sees it, stored as a raw disk; `changes`:
    the meta context of its changes since `earlier`."""
    return DiskSource(
        target=disk.target,
        path=Path(disk.path or ""),
        location=disk.network,
        format="raw",
        virtual_size=disk.virtual_size or 0,
        nbd=NbdLocation(socket, disk.target, changes),
        since=earlier,
    )
