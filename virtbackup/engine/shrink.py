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
"""

import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.adapters.guestfs_ops import Appliance, Drive, open_appliance
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import Domain
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
    NotEnoughSpace,
    ShrinkMode,
    ShrinkOptions,
    ShrinkOutcome,
    ShrinkRefused,
    compat_problem,
    guest_name,
    is_ignored,
    plan_shrink,
    vg_ignored,
)
from virtbackup.core.sizes import human_size
from virtbackup.engine.methods.image_source import ConsistencyOptions, SourceContext
from virtbackup.engine.methods.stable_images import stable_images

log = logging.getLogger(__name__)

DEFAULT_TMP = Path("/var/tmp")
PARTIAL_SUFFIX = ".virtbackup-partial"
CONVERT_TIMEOUT = 24 * 3600.0


@dataclass(frozen=True)
class Image:
    """One disk to shrink: where it is and what it is."""

    target: str
    path: str
    format: str
    virtual_size: int | None = None


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


# -- the work inside the appliance ------------------------------------------------------------


def reclaim(
    app: Appliance,
    targets: Sequence[str],
    options: ShrinkOptions,
    progress: StageSink,
    domain: str,
    *,
    zero_fallback: bool = False,
    stages_after: int = 0,
) -> list[str]:
    """Trim every filesystem, discard swap, reclaim VG free space; the notes to show.

    `stages_after`: how many stages the caller still has once the appliance is stopped.
    """
    notes: list[str] = []
    filesystems = app.filesystems()
    read_only = app.read_only_lvs()
    vgs = app.volume_groups()
    # The launch was stage 1; the final flush is the last.
    total = 2 + len(filesystems) + len(vgs) + stages_after
    for dev, kind in filesystems.items():
        name = guest_name(dev, targets)
        if is_ignored(dev, targets, options.ignore):
            notes.append(f"{name}: ignored (--ignore)")
            continue
        if dev in read_only:
            notes.append(f"{name}: read-only LV, left alone")
            continue
        if kind == "swap":
            progress.stage(domain, f"discarding swap {name}", total)
            reason = app.discard_swap(dev)
        elif kind == "unknown":
            notes.append(f"{name}: no filesystem found, left alone")
            continue
        elif kind.startswith("crypto_"):
            notes.append(f"{name}: encrypted ({kind}), cannot be trimmed")
            continue
        else:
            progress.stage(domain, f"trimming {name} ({kind})", total)
            reason = app.trim(dev, zero_fallback=zero_fallback)
        if reason:
            notes.append(f"{name}: {reason}")
    for vg in vgs:
        if vg_ignored(vg, options.ignore):
            notes.append(f"volume group {vg}: ignored (--ignore)")
            continue
        progress.stage(domain, f"reclaiming free space of volume group {vg}", total)
        reason = app.reclaim_vg_free(vg)
        if reason:
            notes.append(f"volume group {vg}: {reason}")
    progress.stage(domain, "flushing and stopping the appliance", total)
    return notes


# -- estimate --------------------------------------------------------------------------------


def estimate_reclaimable(images: Sequence[Image], launch_timeout: float) -> int | None:
    """Roughly what shrinking would free: allocated minus what the guest filesystems use.

    One read-only appliance launch (10-20 s under TCG), so the CLI asks for it only
    with --estimate. None when no filesystem could be looked at. An upper bound: data
    outside filesystems (read-only LVs, unformatted partitions) counts as reclaimable.
    """
    allocated = [allocated_bytes(image.path) for image in images]
    if any(size is None for size in allocated):
        return None
    drives = [Drive(image.path, image.format, readonly=True) for image in images]
    used = 0
    looked = False
    with open_appliance(drives, launch_timeout=launch_timeout) as app:
        for dev, kind in app.filesystems().items():
            if kind in ("swap", "unknown") or kind.startswith("crypto_"):
                continue
            size = app.used_bytes(dev)
            if size is not None:
                used += size
                looked = True
    if not looked:
        return None
    return max(0, sum(size or 0 for size in allocated) - used)


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


# -- copy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyTarget:
    image: Image
    output: Path  # the final name
    format: str
    replaces: bool  # output is the original's path: renamed over it


def copy_targets(images: Sequence[Image], options: ShrinkOptions) -> list[CopyTarget]:
    """Where each image's compact copy goes; UsageError-like refusals for clashes."""
    out: list[CopyTarget] = []
    for image in images:
        fmt = options.convert or image.format
        source = Path(image.path)
        if options.to_dir is not None:
            name = source.name if options.convert is None else _renamed(source.name, fmt)
            output = options.to_dir / name
            if output.exists():
                raise ShrinkRefused(
                    f"{output} exists", "remove it or choose another directory with --to"
                )
            out.append(CopyTarget(image, output, fmt, False))
            continue
        if allocated_bytes(image.path) is None:
            raise ShrinkRefused(
                f"{image.target} is the block device {image.path}: a compact copy cannot "
                "replace it",
                "write the copy elsewhere with --to DIR",
            )
        output = source.with_name(_renamed(source.name, fmt))
        replaces = output == source
        if not replaces and output.exists():
            raise ShrinkRefused(f"{output} exists", "remove it, or write the copy with --to DIR")
        out.append(CopyTarget(image, output, fmt, replaces))
    return out


def _renamed(name: str, fmt: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if dot and ext in ("qcow2", "raw", "img"):
        if ext == "img" and fmt == "raw":
            return name
        return f"{stem}.{fmt}"
    return f"{name}.{fmt}"


def check_space(targets: Sequence[CopyTarget], tmp_dir: Path) -> None:
    """Copy mode needs, in the worst case, the virtual size of each disk for its overlay
    (a filesystem that cannot trim gets its free space written with zeros) and the
    allocated size of each source for its new image. Checked before anything is done."""
    needs: dict[int, int] = {}
    where: dict[int, Path] = {}
    for target in targets:
        size = target.image.virtual_size or _virtual_size(target.image)
        dev = os.stat(tmp_dir).st_dev
        needs[dev] = needs.get(dev, 0) + size
        where.setdefault(dev, tmp_dir)
        out_dir = target.output.parent
        dev = os.stat(out_dir).st_dev
        needs[dev] = needs.get(dev, 0) + (allocated_bytes(target.image.path) or size)
        where.setdefault(dev, out_dir)
    for dev, need in needs.items():
        free = shutil.disk_usage(where[dev]).free
        if free < need:
            raise NotEnoughSpace(
                f"not enough free space in {where[dev]} for copy mode: up to {human_size(need)} "
                f"needed (overlays up to the disks' virtual size, new images up to their "
                f"allocated size), {human_size(free)} free",
                "free some space, put the overlays elsewhere with --tmp DIR, or write the "
                "copies elsewhere with --to DIR",
            )


def shrink_copy(
    images: Sequence[Image],
    options: ShrinkOptions,
    progress: StageSink,
    domain: str,
    dom: Domain | None = None,
    hypervisor: Hypervisor | None = None,
) -> tuple[list[DiskOutcome], list[str]]:
    """Compact copies of `images` through throw-away overlays (see the module doc)."""
    tmp_dir = options.tmp_dir or DEFAULT_TMP
    targets = copy_targets(images, options)
    if options.to_dir is not None and not options.to_dir.is_dir():
        raise ShrinkRefused(f"--to {options.to_dir}: no such directory")
    check_space(targets, tmp_dir)
    before = {image.target: allocated_bytes(image.path) for image in images}
    notes: list[str] = []
    outcomes: list[DiskOutcome] = []
    total = 2 + len(images)  # revised once the appliance has listed the filesystems
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="virtbackup-shrink-", dir=tmp_dir))
        stack.callback(shutil.rmtree, workdir, True)
        overlays = []
        for image in images:
            overlay = throwaway_overlay(image.target, image.path, image.format, workdir)
            overlays.append(overlay)
        drives = [Drive(str(overlay), "qcow2") for overlay in overlays]
        progress.stage(domain, "launching the appliance", total)
        with open_appliance(
            drives, discard="besteffort", launch_timeout=options.appliance_timeout
        ) as app:
            notes += reclaim(
                app,
                [i.target for i in images],
                options,
                progress,
                domain,
                zero_fallback=True,
                stages_after=len(images),
            )
        for target, overlay in zip(targets, overlays, strict=True):
            progress.stage(domain, f"writing {target.image.target} to {target.output}")
            write_compact(overlay, target, options.compress)
            outcomes.append(
                DiskOutcome(
                    target.image.target,
                    target.image.path,
                    before[target.image.target],
                    allocated_bytes(str(target.output)),
                    str(target.output),
                )
            )
            if not target.replaces and options.to_dir is None and dom and hypervisor:
                hypervisor.redefine_disk(
                    dom, target.image.target, "file", str(target.output), target.format
                )
                notes.append(
                    f"{target.image.target}: the domain now uses {target.output}; the "
                    f"original {target.image.path} is kept, delete it once the domain runs"
                )
    return outcomes, notes


def write_compact(overlay: Path, target: CopyTarget, compress: bool) -> None:
    """qemu-img convert the overlay to a temporary name beside the output, sync, rename."""
    partial = target.output.with_name(f".{target.output.name}{PARTIAL_SUFFIX}")
    argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", target.format]
    if target.format == "qcow2":
        argv += ["-o", "compat=1.1"]
        if compress:
            argv.append("-c")
    partial.unlink(missing_ok=True)  # a killed run's (or a link): qemu-img would write through
    try:
        runner.run([*argv, str(overlay), str(partial)], timeout=CONVERT_TIMEOUT)
        source = os.stat(target.image.path)
        os.chown(partial, source.st_uid, source.st_gid)
        os.chmod(partial, stat.S_IMODE(source.st_mode))
        _fsync(partial)
        os.rename(partial, target.output)
        _fsync(target.output.parent)
    finally:
        if os.path.lexists(partial):
            partial.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _virtual_size(image: Image) -> int:
    return image_info(image.path, image.format, force_share=False).virtual_size


def throwaway_overlay(target: str, image: str | Path, fmt: str, workdir: Path) -> Path:
    """A qcow2 (compat 1.1, so discards reach it) on top of `image`, in `workdir`: what
    the appliance writes lands there and the image itself is only read."""
    overlay = workdir / f"{target}.overlay.qcow2"
    runner.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1",
            "-b",
            str(Path(image).resolve()),
            "-F",
            fmt,
            str(overlay),
        ]
    )
    return overlay
