"""`virtbackup shrink`: make the images of stopped domains as small as they can be.

    outcomes = shrink_domains(hypervisor, ["web1"], ShrinkOptions(), progress)

In place (default), in one libguestfs appliance holding every disk of the domain (so a
volume group spanning disks is whole), drives writable with discard passed down to the
image file:
- every filesystem is mounted with `discard` and trimmed (fstrim); one that cannot be
  mounted is skipped with a note;
- swap (partitions and LVs) is discarded whole, then its first page (label, UUID,
  version) is written back: the guest's fstab and resume= still find it;
- the free extents of each guest volume group are reclaimed through a temporary LV that
  is discarded and removed;
- read-only LVs and whatever `--ignore` names are left alone.
qemu turns the discards into holes in the image file (raw) or freed clusters (qcow2),
like `virt-sparsify --in-place`, which does one disk per appliance launch.

Copy mode (`--to DIR` or `--convert FORMAT`): the same work on a throw-away qcow2 overlay
(compat=1.1, so discarded clusters read as zeros; a filesystem that cannot trim gets its
free space zeroed), then `qemu-img convert` writes a new compact image under a temporary
name, synced and renamed into place: a half-written image never carries the final name.
Without `--to`, the new image replaces the original (same name and format), or, with
another format, is written beside it and the domain is pointed at it (the original is
kept for the admin to delete).

Safety: the domain's lock is held and a dead run's leftovers finished first (the
consistency layer's session); a running domain is refused unless `--shutdown`, which
shuts it down gracefully and starts it again afterwards; qcow2 compat=0.10 overlays
(images with a backing file) are refused (or amended with `--amend-compat`); in-place
mode refuses images on a filesystem that cannot punch holes, since trimming would free
nothing there.

Here: the domain loop, in-place mode and its refusals. Copy mode is engine/shrink/copy_mode;
what is done inside the appliance, engine/shrink/guest_reclaim.
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.adapters.guestfs_ops import Drive, open_appliance
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.images import allocated_bytes, image_info, punches_holes
from virtbackup.core.errors import (
    CommandFailed,
    Interrupted,
    LockHeld,
    UsageError,
    VirtbackupError,
)
from virtbackup.core.model import DomainFacts
from virtbackup.core.progress import StageSink
from virtbackup.core.shrink_plan import (
    DiskOutcome,
    ShrinkMode,
    ShrinkOptions,
    ShrinkOutcome,
    ShrinkRefused,
    compat_problem,
    plan_shrink,
)
from virtbackup.engine.methods.image_source import ConsistencyOptions, SourceContext
from virtbackup.engine.methods.stable_images import stable_images
from virtbackup.engine.shrink.copy_mode import shrink_copy
from virtbackup.engine.shrink.guest_reclaim import Image, reclaim

log = logging.getLogger(__name__)


# -- host-side facts ---------------------------------------------------------------------


def qcow2_compat(path: str) -> tuple[str | None, bool]:
    """The compat level of a qcow2 image ("0.10", "1.1"), and whether it has a backing
    file (it is an overlay). Not shared: the domain is off, qemu-img takes the lock."""
    info = image_info(path, "qcow2", force_share=False)
    return info.compat, info.backing_file is not None


def can_punch_holes(directory: Path) -> bool:
    """Whether discards free blocks there; one that cannot be told counts as no."""
    try:
        return punches_holes(directory)
    except OSError as err:
        log.debug("punch-hole probe in %s: %s", directory, err)
        return False


# -- in place --------------------------------------------------------------------------------


def shrink_in_place(
    images: Sequence[Image], options: ShrinkOptions, progress: StageSink, domain: str
) -> tuple[list[DiskOutcome], list[str]]:
    """Shrink images in place (the domain must not run); outcomes per disk, and notes."""
    before = {image.target: allocated_bytes(image.path) for image in images}
    drives = [Drive(image.path, image.format) for image in images]
    targets = [image.target for image in images]
    progress.stage(domain, "launching the appliance", 2)
    with open_appliance(drives, discard="enable", launch_timeout=options.appliance_timeout) as app:
        notes = reclaim(app, targets, options, progress, domain)
    outcomes = [
        DiskOutcome(i.target, i.path, before[i.target], allocated_bytes(i.path)) for i in images
    ]
    return outcomes, notes


def check_in_place(images: Sequence[Image], options: ShrinkOptions) -> list[str]:
    """Refuse (ShrinkRefused) what in-place mode cannot shrink; amend compat if asked."""
    problems: list[str] = []
    for image in images:
        if image.format == "qcow2":
            compat, backing = qcow2_compat(image.path)
            problem = compat_problem(
                image.path, compat, backing, ShrinkMode.IN_PLACE, options.amend_compat
            )
            if problem:
                problems.append(problem)
        if allocated_bytes(image.path) is not None and not can_punch_holes(Path(image.path).parent):
            problems.append(
                f"{image.path} is on a filesystem that cannot punch holes: shrinking in "
                "place would free nothing; use copy mode (--to DIR on another filesystem)"
            )
    if problems:
        raise ShrinkRefused("; ".join(problems))
    return amend_compat(images) if options.amend_compat else []


def amend_compat(images: Sequence[Image]) -> list[str]:
    notes = []
    for image in images:
        if image.format == "qcow2" and qcow2_compat(image.path)[0] == "0.10":
            runner.run(["qemu-img", "amend", "-f", "qcow2", "-o", "compat=1.1", image.path])
            notes.append(f"{image.target}: qcow2 compat upgraded from 0.10 to 1.1")
    return notes


# -- domains -------------------------------------------------------------------------------


def shrink_domain(
    hypervisor: Hypervisor,
    facts: DomainFacts,
    options: ShrinkOptions,
    progress: StageSink,
    *,
    state_dir: Path | None = None,
) -> ShrinkOutcome:
    """Shrink one domain; refusals and failures come back in the outcome's `error`,
    except errors that would fail every domain alike (appliance setup, locks held are
    per domain and reported)."""
    started = time.monotonic()
    plan = plan_shrink(facts, options)
    if not plan.eligible:
        return ShrinkOutcome(facts.name, error=f"{facts.name}: not shrunk: {plan.reason}")
    consistency = ConsistencyOptions(shutdown_timeout=options.shutdown_timeout)
    notes = [f"{d.disk.target}: {d.reason}" for d in plan.disks if not d.shrink]
    progress.begin(facts.name, 3)
    try:
        with stable_images(
            hypervisor, plan.images_plan, SourceContext(consistency, state_dir, progress)
        ) as window:
            images = [Image(i.target, str(i.path), i.format, i.virtual_size) for i in window.images]
            if options.mode is ShrinkMode.IN_PLACE:
                notes += check_in_place(images, options)
                disks, more = shrink_in_place(images, options, progress, facts.name)
            else:
                # Any compat level: discards land in our own compat=1.1 overlay.
                dom = hypervisor.domain(facts.name)
                disks, more = shrink_copy(images, options, progress, facts.name, dom, hypervisor)
            notes += more
    except (UsageError, Interrupted, LockHeld):
        # The same for every domain (appliance setup, space, options), or exit 3.
        raise
    except ShrinkRefused as err:
        return _failed(facts.name, started, notes, f"{facts.name}: not shrunk: {err}")
    except CommandFailed as err:
        return _failed(facts.name, started, notes, f"{facts.name}: {err}")
    except VirtbackupError as err:
        return _failed(facts.name, started, notes, f"{facts.name}: {err}")
    finally:
        progress.end(facts.name)
    return ShrinkOutcome(facts.name, tuple(disks), time.monotonic() - started, tuple(notes))


def _failed(name: str, started: float, notes: list[str], error: str) -> ShrinkOutcome:
    return ShrinkOutcome(name, (), time.monotonic() - started, tuple(notes), error)


def shrink_domains(
    hypervisor: Hypervisor,
    names: Sequence[str],
    options: ShrinkOptions,
    progress: StageSink,
    *,
    state_dir: Path | None = None,
) -> list[ShrinkOutcome]:
    """Shrink each named domain in turn; one that is refused or fails does not stop the
    others. UnknownDomain (exit 2) before anything is done when a name does not exist."""
    outcomes = []
    for facts in hypervisor.discover(names):
        outcomes.append(shrink_domain(hypervisor, facts, options, progress, state_dir=state_dir))
    return outcomes
