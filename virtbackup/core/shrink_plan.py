"""Which domains and disks `virtbackup shrink` may touch, and why not: pure decisions.

Shrinking rewrites the guest's disks, so it runs only on domains nothing else uses: shut
off, or (with `--shutdown`) running and able to react to a shutdown request, which the
engine then shuts down and starts again afterwards, like the shutdown backup method.
A paused, suspended, crashed or transitional domain is refused whatever was asked.

Two modes:
- in place (default): every filesystem is trimmed, swap and free space of guest volume
  groups discarded, through discard passed down to the image file (holes punched).
- copy (`--to DIR` or `--convert FORMAT`): the same on a throw-away qcow2 overlay, then
  `qemu-img convert` writes a new compact image.

Also here: the names a user may give to `--ignore` and how they match what the appliance
sees, and the results.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from virtbackup.core.errors import UsageError, VirtbackupError
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.planning import SHUTDOWN_STATES, DiskPlan, DomainPlan

# Formats whose holes and discards we know how to reclaim in place.
IN_PLACE_FORMATS = frozenset({"raw", "qcow2"})
# Formats `qemu-img convert` writes and qemu runs well (virt-sparsify's list).
COPY_FORMATS = ("qcow2", "raw")


class ShrinkMode(StrEnum):
    IN_PLACE = "in-place"
    COPY = "copy"


class ShrinkRefused(VirtbackupError):
    """A domain cannot be shrunk in its state or with its disks (exit 1: the other
    domains of the run are still shrunk)."""


class ShrinkFailed(VirtbackupError):
    """Shrinking a domain failed part-way; its images are whole (exit 1)."""


class NotEnoughSpace(UsageError):
    """The temporary or output directory is too small for copy mode (exit 2)."""


@dataclass(frozen=True)
class ShrinkOptions:
    ignore: tuple[str, ...] = ()  # filesystems (/dev/sda1, vda1, vg/lv) and volume groups
    shutdown: bool = False  # shut a running domain down first, start it again after
    shutdown_timeout: float = 300.0
    to_dir: Path | None = None  # copy mode: write the new images here
    convert: str | None = None  # copy mode: output format (default: the input's)
    compress: bool = False  # copy mode, qcow2 output: compressed clusters
    tmp_dir: Path | None = None  # copy mode: where the overlays go (default /var/tmp)
    amend_compat: bool = False  # upgrade qcow2 compat=0.10 images to 1.1 first
    appliance_timeout: float = 300.0  # seconds an appliance launch may take

    @property
    def mode(self) -> ShrinkMode:
        copy = self.to_dir is not None or self.convert is not None
        return ShrinkMode.COPY if copy else ShrinkMode.IN_PLACE


def check_options(options: ShrinkOptions) -> None:
    """Option combinations that make no sense: UsageError (exit 2)."""
    if options.compress and options.mode is not ShrinkMode.COPY:
        raise UsageError("--compress needs copy mode", "add --to DIR or --convert qcow2")
    if options.convert is not None and options.convert not in COPY_FORMATS:
        raise UsageError(
            f"--convert {options.convert}: unsupported output format",
            f"choose one of {', '.join(COPY_FORMATS)}",
        )
    if options.compress and options.convert not in (None, "qcow2"):
        raise UsageError("--compress needs qcow2 output", "use --convert qcow2")


# -- eligibility -------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskShrink:
    disk: DiskFacts
    shrink: bool
    reason: str


@dataclass(frozen=True)
class DomainShrink:
    domain: DomainFacts
    eligible: bool
    reason: str
    needs_shutdown: bool
    disks: tuple[DiskShrink, ...]

    @property
    def chosen(self) -> tuple[DiskFacts, ...]:
        return tuple(d.disk for d in self.disks if d.shrink)

    @property
    def allocated(self) -> int:
        return sum(d.allocated or 0 for d in self.chosen)

    @property
    def images_plan(self) -> DomainPlan:
        """The images shrink reads and writes as a plan of the consistency layer: the
        chosen disks, shut off for the work (shut down first when it runs)."""
        method = Method.SHUTDOWN if self.needs_shutdown else Method.OFFLINE
        disks = tuple(DiskPlan(d.disk, d.shrink, d.reason) for d in self.disks)
        return DomainPlan(self.domain, method if self.eligible else None, self.reason, disks)

    @property
    def virtual_size(self) -> int:
        return sum(d.virtual_size or 0 for d in self.chosen)


def disk_shrink_verdict(disk: DiskFacts, mode: ShrinkMode) -> DiskShrink:
    """Whether one disk of a domain can be shrunk in `mode`, with the reason if not."""
    if disk.device != "disk":
        return DiskShrink(disk, False, f"{disk.device}: not a disk image")
    if disk.source_type not in ("file", "block"):
        return DiskShrink(disk, False, f"{disk.source_type} disks are not supported yet")
    if disk.probe_error is not None:
        return DiskShrink(disk, False, disk.probe_error)
    if disk.path is None:
        return DiskShrink(disk, False, "no source")
    if disk.readonly:
        return DiskShrink(disk, False, "read-only for the guest: left alone")
    if disk.shareable:
        return DiskShrink(disk, False, "shareable: another domain may use it, left alone")
    fmt = disk.format or "raw"
    if mode is ShrinkMode.IN_PLACE and fmt not in IN_PLACE_FORMATS:
        return DiskShrink(disk, False, f"{fmt} images cannot be shrunk in place: use --convert")
    return DiskShrink(disk, True, "")


def plan_shrink(facts: DomainFacts, options: ShrinkOptions) -> DomainShrink:
    """Whether a domain can be shrunk now, which disks, and whether it must be shut down."""
    disks = tuple(disk_shrink_verdict(d, options.mode) for d in facts.disks)

    def refuse(reason: str) -> DomainShrink:
        return DomainShrink(facts, False, reason, False, disks)

    state = facts.state
    needs_shutdown = False
    if state in SHUTDOWN_STATES:
        if not options.shutdown:
            return refuse(f"{state}: shut it down first, or pass --shutdown")
        if not facts.persistent:
            return refuse(f"{state} and transient: it would vanish when shut down")
        needs_shutdown = True
    elif state is DomainState.PAUSED:
        return refuse("paused: qemu holds its disks and a paused guest cannot shut down")
    elif state is not DomainState.SHUTOFF:
        return refuse(f"{state}: shrink needs a shut-off domain")
    if not any(d.shrink for d in disks):
        return refuse("no disk to shrink" if facts.disks else "no disks")
    how = "shut down, shrunk, started again" if needs_shutdown else "shut off"
    return DomainShrink(facts, True, how, needs_shutdown, disks)


# -- qcow2 compat -------------------------------------------------------------------------


def compat_problem(
    path: str, compat: str | None, has_backing: bool, mode: ShrinkMode, amend: bool
) -> str | None:
    """Why an image's qcow2 compat level stops shrinking it in place, or None.

    compat=0.10 (qcow2 version 2) has no zero clusters. Without a backing file a
    discarded cluster is simply freed (it reads as zeros), so shrinking works. In an
    overlay, a freed cluster would show the backing file's data again, so qemu keeps it:
    nothing is reclaimed (measured: 25 MiB before and after). Version 3 (compat=1.1)
    records zeros instead; `qemu-img amend` upgrades in a moment. Copy mode is not
    affected: its discards land in its own compat=1.1 overlay.
    """
    if compat != "0.10" or not has_backing or amend or mode is not ShrinkMode.IN_PLACE:
        return None
    return (
        f"{path} is a qcow2 compat=0.10 overlay, which cannot discard: upgrade it with "
        f"'qemu-img amend -f qcow2 -o compat=1.1 {path}' (or pass --amend-compat), "
        "or use copy mode (--to DIR)"
    )


# -- names of filesystems and volume groups ----------------------------------------------

_APPLIANCE_DISK = re.compile(r"^/dev/sd([a-z]+)(\d*)$")


def _disk_index(letters: str) -> int:
    index = 0
    for char in letters:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


def guest_name(device: str, targets: Sequence[str]) -> str:
    """The appliance's /dev/sdb2 as the domain sees it (vdb2); LVs and others unchanged.

    The appliance numbers drives in the order they were added, which is the order of
    `targets`.
    """
    match = _APPLIANCE_DISK.match(device)
    if match:
        index = _disk_index(match.group(1))
        if 0 <= index < len(targets):
            return f"{targets[index]}{match.group(2)}"
    return device


def names_of(device: str, targets: Sequence[str]) -> set[str]:
    """Every spelling of a filesystem a user may pass to --ignore."""
    names = {device, device.removeprefix("/dev/")}
    guest = guest_name(device, targets)
    names |= {guest, f"/dev/{guest}"}
    parts = device.removeprefix("/dev/").split("/")
    if len(parts) == 2:  # an LV: /dev/VG/LV
        vg, lv = parts
        names.add(f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}")
    return names


def is_ignored(device: str, targets: Sequence[str], ignore: Iterable[str]) -> bool:
    wanted = {name.rstrip("/") for name in ignore}
    return bool(names_of(device, targets) & wanted)


def vg_ignored(vg: str, ignore: Iterable[str]) -> bool:
    return any(name.removeprefix("/dev/").rstrip("/") == vg for name in ignore)


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskOutcome:
    target: str
    path: str
    before: int | None  # bytes allocated on the host before (None: a block device)
    after: int | None
    output: str | None = None  # copy mode: the new image

    @property
    def saved(self) -> int | None:
        if self.before is None or self.after is None:
            return None
        return self.before - self.after


@dataclass(frozen=True)
class ShrinkOutcome:
    domain: str
    disks: tuple[DiskOutcome, ...] = ()
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    error: str | None = None  # the domain was refused or failed: why

    @property
    def ok(self) -> bool:
        return self.error is None
