"""The LVM snapshots the `lvm` method reads from (methods/lvm): created, mounted, shared,
watched and removed.

One snapshot per LV is created with `lvcreate -s`, sized by `snapshot_size` (a share of
the origin or a fixed size, checked against the free extents of the VG). Disks on the
same LV share it; with a run-wide `LvmSnapshots` (see `lvm_run`) so do the domains of
one run, unless a domain is frozen for its own snapshot. A snapshot of a filesystem is
mounted read-only (ext3/4 `noload`, xfs `nouuid`) on a private folder below
/run/virtbackup/lvm. Afterwards the mount and the snapshot are removed.

A snapshot whose copy-on-write space fills up becomes invalid and its data garbage. An
`OverflowWatch` polls the fill level of the snapshots a domain reads while its window
is open; `guard(progress)` (methods/lvm LvmImages) stops the data path at once when one
overflows and checks again when each disk's stream ends, before the backup is committed.

Every snapshot and mount is journalled before it is made (engine/runs/session), so a
kill -9 leaves nothing that `virtbackup clean` (or the next run) does not remove.
Leftovers without a journal are recognised by their `vbsnap-` name and the mount folder
and swept by the first run that finds no other run holding LVM snapshots (`LvmLock`, a
shared flock).
"""

import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from virtbackup.adapters import lvm
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import ensure_dir, resolve_state_dir
from virtbackup.adapters.locks import open_lock_file
from virtbackup.core.config import SnapshotSize
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.lvm import (
    RUN_JOURNAL_UUID,
    UNSUPPORTED_FILESYSTEMS,
    WARN_PERCENT,
    LogicalVolume,
    LvmError,
    LvmSnapshotRecord,
    MountRecord,
    SnapshotOverflow,
    check_fits,
    mount_options,
    overflow_problem,
    snapshot_bytes,
    snapshot_name,
)
from virtbackup.core.progress import ProgressSink, StepSink
from virtbackup.core.sizes import human_size
from virtbackup.engine.methods.image_source import ConsistencyOptions, Quiesce, SourceContext
from virtbackup.engine.methods.lvm_undo import DEFAULT_MOUNT_ROOT, lvm_lock, sweep_leftovers
from virtbackup.engine.runs.session import Session

log = logging.getLogger(__name__)

RUN_JOURNAL_NAME = "LVM snapshots"


@dataclass(frozen=True)
class LvmOptions:
    snapshot_size: SnapshotSize = SnapshotSize(percent=10.0)
    quiesce: Quiesce = Quiesce.AUTO
    mount_root: Path = DEFAULT_MOUNT_ROOT
    poll_interval: float = 1.0  # seconds between two looks at the snapshots' fill level


def lvm_options(options: ConsistencyOptions) -> LvmOptions:
    return LvmOptions(snapshot_size=options.snapshot_size, quiesce=options.quiesce)


# -- the shared lock -------------------------------------------------------------------------


class LvmLock:
    """Shared by every run while it holds LVM snapshots; whoever gets it alone first
    sweeps what dead runs left (their flocks died with them)."""

    def __init__(self, state_dir: Path, steps: StepSink, mount_root: Path) -> None:
        self.lock = lvm_lock(state_dir)
        self.steps = steps
        self.mount_root = mount_root
        self._fd: int | None = None

    def __enter__(self) -> "LvmLock":
        fd = open_lock_file(self.lock.path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if alone:
                problems = sweep_leftovers(
                    self.lock.path.parent.parent,
                    self.steps,
                    mount_root=self.mount_root,
                    lock_held=True,
                )
                if problems:
                    raise LvmError(
                        f"leftover LVM snapshots of an earlier run remain ({'; '.join(problems)})",
                        "fix the cause, then run 'virtbackup clean'",
                    )
            fcntl.flock(fd, fcntl.LOCK_SH)  # converts the exclusive lock, or waits for one
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- snapshots --------------------------------------------------------------------------------


@dataclass
class Snapshot:
    origin: LogicalVolume
    lv: LogicalVolume  # the snapshot LV as lvs saw it after lvcreate
    size: int
    frozen_for: frozenset[str]  # uuids of the domains frozen while it was taken
    mount_dir: Path | None = None


@dataclass
class LvmSnapshots:
    """The snapshots of one run (or of one domain), at most one per LV and domain state;
    each is journalled in `session` and removed when the session's scope ends."""

    session: Session
    options: LvmOptions
    _by_origin: dict[str, list[Snapshot]] = field(default_factory=dict)

    def reusable(self, origin: LogicalVolume, domain_uuid: str, frozen: bool) -> Snapshot | None:
        """A snapshot of `origin` this domain may read: any one, unless the domain is to be
        frozen for its snapshot and none was taken while it was."""
        for snapshot in reversed(self._by_origin.get(origin.full_name, [])):
            if not frozen or domain_uuid in snapshot.frozen_for:
                return snapshot
        return None

    def create(self, origin: LogicalVolume, domain_uuid: str, frozen: bool) -> Snapshot:
        taken = self._by_origin.setdefault(origin.full_name, [])
        name = snapshot_name(origin.name, self.session.run_id, len(taken) + 1)
        size = snapshot_bytes(self.options.snapshot_size, origin.size, origin.extent_size)
        fresh = lvm.find_lv(origin.full_name) or origin  # the VG's free space right now
        check_fits(origin, size, fresh.vg_free)
        record = LvmSnapshotRecord(vg=origin.vg, name=name, origin=origin.name)
        who = self.session.domain_name
        self.session.steps.step(
            who,
            f"create LVM snapshot {origin.vg}/{name} of {origin.full_name} ({human_size(size)})",
        )
        self.session.change(record, lambda: lvm.create_snapshot(origin, name, size))
        lv = lvm.find_lv(f"{origin.vg}/{name}")
        if lv is None:
            raise LvmError(f"lvcreate made no snapshot {origin.vg}/{name}")
        snapshot = Snapshot(origin, lv, size, frozenset({domain_uuid}) if frozen else frozenset())
        taken.append(snapshot)
        return snapshot

    def mount(self, snapshot: Snapshot, fstype: str) -> Path:
        """The folder where the snapshot's filesystem is mounted read-only."""
        if snapshot.mount_dir is not None:
            return snapshot.mount_dir
        if fstype in UNSUPPORTED_FILESYSTEMS:
            raise LvmError(
                f"cannot mount the snapshot of {snapshot.origin.full_name}: "
                f"{UNSUPPORTED_FILESYSTEMS[fstype]}"
            )
        root = ensure_dir(self.options.mount_root)
        folder = root / snapshot.lv.name
        record = MountRecord(target=str(folder), source=snapshot.lv.path)

        def do() -> None:
            folder.mkdir(mode=0o700, exist_ok=True)
            lvm.mount_ro(snapshot.lv.path, str(folder), fstype, mount_options(fstype))

        self.session.steps.step(
            self.session.domain_name, f"mount {snapshot.lv.full_name} read-only on {folder}"
        )
        try:
            self.session.change(record, do)
        except VirtbackupError as err:
            # An overflowed snapshot does not mount: say that, not what mount says.
            watch = OverflowWatch([snapshot], self.session.steps, self.session.domain_name, 0)
            if watch.poll() is not None:
                raise watch.error() from err
            raise LvmError(
                f"cannot mount the snapshot {snapshot.lv.full_name} ({fstype}) read-only: {err}"
            ) from err
        snapshot.mount_dir = folder
        return folder


@contextmanager
def lvm_snapshots_in(session: Session, options: LvmOptions) -> Iterator[LvmSnapshots]:
    """Snapshots journalled in `session`, all removed when the block ends."""
    with LvmLock(session.state_dir, session.steps, options.mount_root):
        with session.scope():
            yield LvmSnapshots(session, options)


@contextmanager
def lvm_run(conn: Hypervisor, context: SourceContext) -> Iterator[LvmSnapshots]:
    """Snapshots shared by every domain of a run (see methods/lvm LvmSource), journalled
    under a pseudo domain of their own and removed when the run ends."""
    options = lvm_options(context.options)
    with Session(
        resolve_state_dir(context.state_dir),
        conn,
        RUN_JOURNAL_UUID,
        RUN_JOURNAL_NAME,
        steps=context.steps,
    ) as session:
        with lvm_snapshots_in(session, options) as snapshots:
            yield snapshots


# -- overflow --------------------------------------------------------------------------------


class OverflowWatch:
    """Polls the fill level of some snapshots in a thread while the window is open."""

    def __init__(
        self, snapshots: Sequence[Snapshot], steps: StepSink, who: str, interval: float
    ) -> None:
        self.snapshots = list(snapshots)
        self.steps = steps
        self.who = who
        self.interval = interval
        self.problem: str | None = None
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vb-lvm-watch", daemon=True)

    def __enter__(self) -> "OverflowWatch":
        if self.snapshots:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self.problem is None:
            try:
                self.poll()
            except Exception as err:  # a failing lvs must not end the watch
                log.warning("cannot check the LVM snapshots' fill level: %s", err)

    def poll(self) -> str | None:
        """Look once; the first problem found (also kept in `problem`)."""
        names = [s.lv.full_name for s in self.snapshots]
        seen = {lv.full_name: lv for lv in lvm.list_lvs(*names)}
        for snapshot in self.snapshots:
            now = seen.get(snapshot.lv.full_name)
            problem = overflow_problem(now)
            if problem is not None:
                self.problem = self.problem or (
                    f"LVM snapshot {snapshot.lv.full_name} of {snapshot.origin.full_name} "
                    f"({human_size(snapshot.size)}) {problem} during the backup"
                )
                return self.problem
            percent = now.snap_percent if now else None
            if percent and percent >= WARN_PERCENT and snapshot.lv.full_name not in self._warned:
                self._warned.add(snapshot.lv.full_name)
                self.steps.warning(
                    self.who,
                    f"LVM snapshot {snapshot.lv.full_name} is {percent:.0f} % full",
                )
        return None

    def error(self) -> SnapshotOverflow:
        return SnapshotOverflow(
            f"{self.problem}: this backup of {self.who} is unusable and was not kept",
            "give the snapshot more room (--snapshot-size, snapshot_size; e.g. 20% or 4G) "
            "or back up when the guest writes less",
        )

    def check(self) -> None:
        """Look now; raise SnapshotOverflow if any snapshot overflowed."""
        if self.problem is None and self.snapshots:
            self.poll()
        if self.problem is not None:
            raise self.error()


class GuardedProgress:
    """Passes progress on; stops the stream when a snapshot overflowed, and checks the
    snapshots once more when a disk's stream ends (before the backup is committed)."""

    def __init__(self, inner: ProgressSink, watch: OverflowWatch) -> None:
        self.inner = inner
        self.watch = watch

    def on_start(self, total: int, label: str) -> None:
        self.inner.on_start(total, label)

    def on_advance(self, nbytes: int) -> None:
        self.inner.on_advance(nbytes)
        if self.watch.problem is not None:
            raise self.watch.error()

    def on_done(self) -> None:
        self.inner.on_done()
        self.watch.check()
