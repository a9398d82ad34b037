"""Make a domain's images safe to read, and put everything back afterwards.

    with stable_images(conn, "web1", Method.SNAPSHOT, ["vda"], options) as window:
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
- offline: the domain is shut off; its images are read as they are.

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
from enum import StrEnum
from pathlib import Path
from typing import Any

from virtbackup.adapters import hypervisor as hv
from virtbackup.adapters.discovery import domain_facts
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.adapters.libvirt_conn import libvirt_module
from virtbackup.core.config import SnapshotSize
from virtbackup.core.consistency_errors import (
    ConsistencyError,
    ConsistencyLost,
    OverlaySpaceError,
    QuiesceFailed,
    ShutdownRefused,
    ShutdownTimeout,
    SnapshotFailed,
    UnsupportedDisk,
)
from virtbackup.core.diskxml import agent_connected
from virtbackup.core.errors import UsageError
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.overlays import overlay_path, snapshot_xml
from virtbackup.core.planning import UnknownDomain
from virtbackup.core.progress import ProgressSink, StepSink
from virtbackup.core.sizes import human_size
from virtbackup.core.undo import FrozenRecord, OverlayRecord, StateRecord
from virtbackup.engine.runs.session import Session

log = logging.getLogger(__name__)

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
class StableImage:
    target: str  # vda
    path: Path  # what to read, byte for byte: the disk's top image (file or device)
    format: str  # raw, qcow2, ... of `path`
    virtual_size: int | None  # bytes the guest sees
    backing_chain: tuple[str, ...]  # images below `path`, top first (not in `path`'s bytes)


@dataclass(frozen=True)
class StableImages:
    domain_name: str
    domain_uuid: str
    method: Method  # snapshot, shutdown or offline (what was done, a shut-off domain is offline)
    consistency: Consistency
    definition_xml: str  # the domain's definition before anything was changed (domain.xml)
    images: tuple[StableImage, ...]

    def guard(self, progress: ProgressSink) -> ProgressSink:
        """The sink to give the data path; a method may watch the streams through it
        (lvm: stop at once, and before the commit, when a snapshot overflowed)."""
        return progress


# -- the one call of the backup glue --------------------------------------------------------


@contextmanager
def stable_images(
    conn: Any,
    domain_name: str,
    method: Method,
    targets: Sequence[str],
    options: ConsistencyOptions | None = None,
    *,
    state_dir: Path | None = None,
    steps: StepSink | None = None,
    run_id: str | None = None,
) -> Iterator[StableImages]:
    """Lock the domain, finish what a dead run left on it, make the disks `targets`
    stable by `method` (snapshot, shutdown or offline) for the `with` block, and undo it
    all on the way out, whatever the way out.

    Raises before the block: UnknownDomain, LockHeld (exit 3), LeftoversRemain,
    UnsupportedDisk, OverlaySpaceError, SnapshotFailed, QuiesceFailed, ShutdownRefused,
    ShutdownTimeout (all leave the domain as it was). On the way out: UndoIncomplete
    when something could not be undone (the journal keeps it for `virtbackup clean`),
    ConsistencyLost when a shut-off domain was started while being read; otherwise the
    block's own exception passes through.
    """
    options = options or ConsistencyOptions()
    dom = lookup_name(conn, domain_name)
    with domain_session(conn, dom, options, state_dir, steps, run_id) as session:
        with session_images(session, dom, method, targets, options) as window:
            yield window


def domain_session(
    conn: Any,
    dom: Any,
    options: ConsistencyOptions,
    state_dir: Path | None,
    steps: StepSink | None,
    run_id: str | None,
) -> Session:
    """The session of one domain: its lock, its journal, its undo stack."""
    return Session(
        resolve_state_dir(state_dir),
        conn,
        str(conn.getURI()),
        str(dom.UUIDString()),
        str(dom.name()),
        steps=steps,
        run_id=run_id,
        commit_timeout=options.commit_timeout,
    )


@contextmanager
def session_images(
    session: Session,
    dom: Any,
    method: Method,
    targets: Sequence[str],
    options: ConsistencyOptions,
) -> Iterator[StableImages]:
    """stable_images inside a session the caller opened for this domain."""
    facts = domain_facts(session.conn, dom)
    disks = select_disks(facts, targets)
    definition = hv.config_xml(dom) or hv.live_xml(dom)
    if facts.state == DomainState.SHUTOFF or method == Method.OFFLINE:
        with _offline(session, dom, facts, disks, definition) as window:
            yield window
    elif method == Method.SNAPSHOT:
        with _snapshot(session, dom, facts, disks, definition, options) as window:
            yield window
    elif method == Method.SHUTDOWN:
        with _shutdown(session, dom, facts, disks, definition, options) as window:
            yield window
    else:
        raise UsageError(f"method {method} is not handled by the consistency layer")


def lookup_name(conn: Any, name: str) -> Any:
    libvirt = libvirt_module()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise UnknownDomain(
                f"unknown domain {name!r}", "'virtbackup list' shows the domains of the host"
            ) from None
        raise


def select_disks(facts: DomainFacts, targets: Sequence[str]) -> list[DiskFacts]:
    by_target = {disk.target: disk for disk in facts.disks}
    chosen = []
    for target in targets:
        disk = by_target.get(target)
        if disk is None:
            raise UnsupportedDisk(f"{facts.name} has no disk {target!r}")
        if disk.path is None or disk.source_type not in ("file", "block", "volume"):
            raise UnsupportedDisk(
                f"{facts.name} {target}: a {disk.source_type} disk has no local image to read",
                "leave it out of the backup",
            )
        chosen.append(disk)
    return chosen


def _images(disks: Sequence[DiskFacts]) -> tuple[StableImage, ...]:
    return tuple(
        StableImage(
            target=disk.target,
            path=Path(disk.path or ""),
            format=disk.format or "raw",
            virtual_size=disk.virtual_size,
            backing_chain=disk.backing_chain,
        )
        for disk in disks
    )


# -- offline -------------------------------------------------------------------------------


@contextmanager
def _offline(
    session: Session, dom: Any, facts: DomainFacts, disks: list[DiskFacts], definition: str
) -> Iterator[StableImages]:
    if facts.state != DomainState.SHUTOFF:
        raise ConsistencyError(
            f"{facts.name} is {facts.state.value}: the offline method reads shut-off domains only",
            "use --method snapshot or shutdown",
        )
    yield StableImages(
        facts.name, facts.uuid, Method.OFFLINE, Consistency.OFFLINE, definition, _images(disks)
    )
    _check_still_off(dom, facts.name)


def _check_still_off(dom: Any, name: str) -> None:
    if hv.is_active(dom):
        raise ConsistencyLost(
            f"{name} was started while its images were being read: this backup may be inconsistent",
            "run the backup again",
        )


# -- snapshot ------------------------------------------------------------------------------


@contextmanager
def _snapshot(
    session: Session,
    dom: Any,
    facts: DomainFacts,
    disks: list[DiskFacts],
    definition: str,
    options: ConsistencyOptions,
) -> Iterator[StableImages]:
    if facts.state not in (DomainState.RUNNING, DomainState.PAUSED):
        raise ConsistencyError(
            f"{facts.name} is {facts.state.value}: it cannot be snapshotted now",
            "try again when it runs or is shut off",
        )
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
        yield StableImages(
            facts.name, facts.uuid, Method.SNAPSHOT, consistency, definition, _images(disks)
        )


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
    session: Session, dom: Any, facts: DomainFacts, xml: str, quiesce: Quiesce
) -> Consistency:
    steps = session.steps
    agent = facts.state == DomainState.RUNNING and agent_connected(hv.live_xml(dom))
    if quiesce != Quiesce.NEVER and not agent:
        why = (
            "it is paused"
            if facts.state == DomainState.PAUSED
            else "no guest agent is connected (install and start qemu-guest-agent in the guest)"
        )
        if quiesce == Quiesce.REQUIRE:
            raise QuiesceFailed(f"cannot freeze the filesystems of {facts.name}: {why}")
        steps.warning(facts.name, f"crash-consistent snapshot: {why}")
    if quiesce != Quiesce.NEVER and agent:
        try:
            with session.scope():  # the thaw is undone (run) however the snapshot ends
                session.register(FrozenRecord())
                hv.create_overlays(dom, xml, quiesce=True)
            return Consistency.QUIESCED
        except SnapshotFailed as err:
            if quiesce == Quiesce.REQUIRE:
                raise QuiesceFailed(
                    f"cannot freeze the filesystems of {facts.name}: {err}"
                ) from None
            steps.warning(
                facts.name, f"quiesced snapshot failed ({err}): taking a crash-consistent one"
            )
    hv.create_overlays(dom, xml, quiesce=False)
    return Consistency.CRASH


def _check_on_overlays(dom: Any, name: str, records: Sequence[OverlayRecord]) -> None:
    """libvirt says the snapshot is made: make sure every disk really writes to our overlay
    (the original is then a read-only backing file and safe to read)."""
    disks = hv.disks_of(hv.live_xml(dom))
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
    session: Session,
    dom: Any,
    facts: DomainFacts,
    disks: list[DiskFacts],
    definition: str,
    options: ConsistencyOptions,
) -> Iterator[StableImages]:
    if facts.state == DomainState.PAUSED:
        raise ShutdownRefused(
            f"{facts.name} is paused: a paused guest cannot shut down",
            "resume it first, or use --method snapshot (it stays paused)",
        )
    if not facts.persistent:
        raise ShutdownRefused(
            f"{facts.name} is transient: once shut down it could not be started again",
            "use --method snapshot",
        )
    if facts.state != DomainState.RUNNING:
        raise ConsistencyError(f"{facts.name} is {facts.state.value}: it cannot be shut down now")
    with session.scope():
        # Registered before asking: a guest that goes off while we wait is started again.
        session.register(StateRecord(was=DomainState.RUNNING, restart=True))
        _shut_down(session.steps, dom, facts.name, options)
        yield StableImages(
            facts.name, facts.uuid, Method.SHUTDOWN, Consistency.OFFLINE, definition, _images(disks)
        )
        _check_still_off(dom, facts.name)


def _shut_down(steps: StepSink, dom: Any, name: str, options: ConsistencyOptions) -> None:
    """Shut the guest down gracefully within the timeout, or force it off, or fail."""
    off = {DomainState.SHUTOFF}
    timeout = options.shutdown_timeout
    agent = agent_connected(hv.live_xml(dom))
    steps.step(name, "shutting down (ACPI power button)")
    asked = hv.request_shutdown(dom, "acpi")
    # With an agent as a second way, the ACPI button gets half the time.
    first = timeout / 2 if agent else timeout
    if asked and hv.wait_state(dom, off, first):
        steps.step(name, "shut off")
        return
    if agent:
        steps.step(name, "no reaction to the power button: shutting down through the guest agent")
        if hv.request_shutdown(dom, "agent") and hv.wait_state(dom, off, timeout - first):
            steps.step(name, "shut off")
            return
    if hv.state(dom) in off:
        return
    if options.force_off:
        steps.warning(name, f"did not shut down within {timeout:.0f}s: forcing it off")
        hv.destroy(dom)
        return
    raise ShutdownTimeout(
        f"{name} did not shut down within {timeout:.0f}s; the backup was not made",
        "allow more time (shutdown timeout) or let virtbackup force it off",
    )
