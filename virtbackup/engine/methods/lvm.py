"""The `lvm` method: read a running domain's images from read-only mounted LVM snapshots.

    with LvmSource()(conn, plan, context) as window:    # plan: core/planning
        progress = window.guard(progress)    # stops a stream from an overflowed snapshot
        for image in window.images:
            stream(image.path)               # inside the snapshot's read-only mount

For each disk the LV under it is found (adapters/lvm: the filesystem holding the image
file, or the block device itself). Then, with the guest's filesystems frozen through
its agent when one answers (the thaw is journalled like every change), the LVs are
snapshotted (methods/lvm_snapshots: sizing, sharing within a run, mounting, the fill
level watch, the sweep of leftovers). An image file is read inside the mounted
snapshot of its filesystem; an LV disk is read from the snapshot device.

A snapshot that overflows while it is read invalidates the backup: the data path stops,
the backup is not committed, the domain fails with SnapshotOverflow and the snapshot is
removed all the same.
"""

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import lvm
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import AgentError, Domain
from virtbackup.core.consistency_errors import QuiesceFailed
from virtbackup.core.errors import Interrupted, VirtbackupError
from virtbackup.core.lvm import (
    UNSUPPORTED_FILESYSTEMS,
    DiskOnLv,
    LogicalVolume,
    NotOnLvm,
    SnapshotOverflow,
)
from virtbackup.core.model import DiskFacts, DomainState, Method
from virtbackup.core.planning import DomainPlan
from virtbackup.core.progress import ProgressSink
from virtbackup.core.undo import FrozenRecord
from virtbackup.engine.datapath.disk_backup import DiskSource
from virtbackup.engine.methods.image_source import (
    DEFAULT_CONTEXT,
    Consistency,
    Quiesce,
    SourceContext,
    StableImages,
    as_planned,
    planned_domain_session,
)
from virtbackup.engine.methods.lvm_snapshots import (
    GuardedProgress,
    LvmOptions,
    LvmSnapshots,
    OverflowWatch,
    Snapshot,
    lvm_options,
    lvm_run,
    lvm_snapshots_in,
)
from virtbackup.engine.runs.session import Session


@dataclass(frozen=True)
class LvmImages(StableImages):
    watch: OverflowWatch

    def guard(self, progress: ProgressSink) -> ProgressSink:
        return GuardedProgress(progress, self.watch)


# -- the method --------------------------------------------------------------------------------


def locate_disks(name: str, disks: Sequence[DiskFacts]) -> list[DiskOnLv]:
    """Where each disk lives on LVM; NotOnLvm or LvmError when the method cannot read it."""
    lookup = lvm.LvLookup()
    found = []
    for disk in disks:
        where = lookup.locate(disk.source_type, disk.path or "")
        if where is None:
            raise NotOnLvm(
                f"{name} {disk.target} ({disk.path}) is not on an LVM logical volume",
                "use --method snapshot, or move the image onto an LV",
            )
        if where.lv.is_thin or where.lv.is_snapshot:
            kind = "a thin volume" if where.lv.is_thin else "itself a snapshot"
            raise NotOnLvm(
                f"{name} {disk.target}: {where.lv.full_name} is {kind}, which the lvm "
                "method does not snapshot",
                "use --method snapshot",
            )
        if where.fstype in UNSUPPORTED_FILESYSTEMS:
            raise NotOnLvm(
                f"{name} {disk.target}: {UNSUPPORTED_FILESYSTEMS[where.fstype]}",
            )
        found.append(where)
    return found


@contextmanager
def lvm_images(
    session: Session,
    dom: Domain,
    plan: DomainPlan,
    options: LvmOptions,
    snapshots: LvmSnapshots,
) -> Iterator[LvmImages]:
    """The images of the disks `plan` backs up inside LVM snapshots, for the `with` block."""
    facts, disks = as_planned(session.hypervisor, dom, plan)
    definition = dom.config_xml() or dom.live_xml()
    places = locate_disks(facts.name, disks)
    running = facts.state == DomainState.RUNNING
    agent = running and dom.agent_connected()
    want_freeze = options.quiesce != Quiesce.NEVER and agent
    if options.quiesce == Quiesce.REQUIRE and not agent:
        why = "it is not running" if not running else "no guest agent is connected"
        raise QuiesceFailed(f"cannot freeze the filesystems of {facts.name}: {why}")

    chosen: dict[str, Snapshot] = {}
    missing: dict[str, LogicalVolume] = {}
    for place in places:
        reuse = snapshots.reusable(place.lv, facts.uuid, want_freeze)
        if reuse is not None:
            chosen[place.lv.full_name] = reuse
        else:
            missing[place.lv.full_name] = place.lv
    frozen = want_freeze and not missing  # all reused ones were taken with this one frozen
    if missing:
        frozen = _take_snapshots(
            session, dom, facts.uuid, facts.name, want_freeze, options, snapshots, missing, chosen
        )
    if not frozen and running and options.quiesce != Quiesce.NEVER and not agent:
        session.steps.warning(
            facts.name,
            "crash-consistent LVM snapshot: no guest agent is connected "
            "(install and start qemu-guest-agent in the guest)",
        )
    consistency = Consistency.QUIESCED if frozen else Consistency.CRASH

    images = []
    for disk, place in zip(disks, places, strict=True):
        snapshot = chosen[place.lv.full_name]
        if place.inner_path is not None:
            folder = snapshots.mount(snapshot, place.fstype or "auto")
            path = folder / place.inner_path.lstrip("/")
        else:
            path = Path(snapshot.lv.path)
        images.append(
            DiskSource(
                target=disk.target,
                path=path,
                format=disk.format or "raw",
                virtual_size=disk.virtual_size or 0,
                backing_chain=disk.backing_chain,
            )
        )
    used = list({id(s): s for s in chosen.values()}.values())
    with OverflowWatch(used, session.steps, facts.name, options.poll_interval) as watch:
        window = LvmImages(
            facts.name,
            facts.uuid,
            Method.LVM,
            consistency,
            definition,
            tuple(images),
            watch,
        )
        try:
            yield window
        except BaseException as err:
            # A read error from an invalidated snapshot says less than the overflow.
            if isinstance(err, VirtbackupError) and not isinstance(
                err, (SnapshotOverflow, Interrupted)
            ):
                try:
                    watch.check()
                except SnapshotOverflow as overflow:
                    raise overflow from err
                except VirtbackupError:
                    pass
            raise


def _take_snapshots(
    session: Session,
    dom: Domain,
    uuid: str,
    name: str,
    want_freeze: bool,
    options: LvmOptions,
    snapshots: LvmSnapshots,
    missing: dict[str, LogicalVolume],
    chosen: dict[str, Snapshot],
) -> bool:
    """Snapshot the `missing` LVs, frozen when asked and possible; whether it was frozen."""
    if want_freeze:
        try:
            with session.scope():  # thawed as soon as the snapshots exist, whatever happens
                session.register(FrozenRecord())
                count = dom.freeze()
                session.steps.step(name, f"froze {count} guest filesystem(s)")
                for full_name, origin in missing.items():
                    chosen[full_name] = snapshots.create(origin, uuid, frozen=True)
            return True
        except AgentError as err:
            if options.quiesce == Quiesce.REQUIRE:
                raise QuiesceFailed(
                    f"cannot freeze the filesystems of {name}: {err.reason}"
                ) from None
            session.steps.warning(
                name, f"cannot freeze the guest's filesystems ({err.reason}): crash-consistent"
            )
    for full_name, origin in missing.items():
        if full_name not in chosen:
            chosen[full_name] = snapshots.create(origin, uuid, frozen=False)
    return False


# -- the image source -----------------------------------------------------------------------


class LvmSource:
    """The lvm method's image source (an ImageSource, see methods/image_source): lock
    the domain, finish what a dead run left, snapshot the LVs under the disks the plan
    backs up, yield an LvmImages, and remove what was made.

    With a run's `stack`, the snapshots are shared by the domains of the run: the first
    domain on an LV creates its snapshot, later domains on that LV reuse it (one
    snapshot of a volume for the whole run), and all are removed when `stack`
    closes at the end of the run; the snapshot size and quiesce mode are those of the
    domain that opens the run. Without one, each domain's snapshots are its own."""

    def __init__(self, stack: ExitStack | None = None) -> None:
        self._stack = stack
        self._shared: LvmSnapshots | None = None

    @contextmanager
    def __call__(
        self, conn: Hypervisor, plan: DomainPlan, context: SourceContext = DEFAULT_CONTEXT
    ) -> Iterator[StableImages]:
        settings = lvm_options(context.options)
        if self._stack is not None and self._shared is None:
            self._shared = self._stack.enter_context(lvm_run(conn, context))
        with planned_domain_session(conn, plan, context) as (dom, session):
            if self._shared is not None:
                with lvm_images(session, dom, plan, settings, self._shared) as window:
                    yield window
            else:
                with lvm_snapshots_in(session, settings) as own:
                    with lvm_images(session, dom, plan, settings, own) as window:
                        yield window
