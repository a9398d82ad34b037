"""`--skip-free`: back up what the guest's filesystems use, not the garbage they freed.

    with compacted(window, SkipFree(tmp_dir), steps) as disks:
        back_up_disks(..., disks.sources, ...)     # disks.warnings: what fell back

Inside the stable-images window (nothing writes to the images), for every file disk in
raw or qcow2 without a backing file:
1. a throw-away qcow2 overlay (compat=1.1: discarded clusters read as zeros) is put on
   the stable image in a private temporary directory; the image itself is only read;
2. one libguestfs appliance holds the overlays of all those disks (a volume group that
   spans disks is whole) and does what `shrink` does: trims every filesystem (or zeroes
   its free space when it cannot trim), discards swap contents keeping the header, and
   discards the free extents of each volume group;
3. `qemu-img convert` writes the overlay's guest-visible content in the image's own
   format: a sparse raw file whose unused blocks are holes (which the data path skips
   and restore writes back as holes), or a compact qcow2. That file is streamed as
   `<target>.<format>.lz4` and the temporary directory removed on exit.

The backup then restores the guest's files, not the image's bytes: for qcow2 a different
(smaller) file with the same guest content, for raw the same guest content with zeros
where the guest had freed blocks. The manifest marks such disks `free_space_skipped`.

Block devices, images with a backing file, other formats, too little temporary space and
an appliance that cannot start fall back to the plain stream of that disk, with a warning.
"""

import logging
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.adapters.guestfs_ops import Drive, open_appliance
from virtbackup.adapters.images import allocated_bytes
from virtbackup.adapters.workdirs import held_workdir, remove_leftovers
from virtbackup.core.errors import Interrupted, VirtbackupError
from virtbackup.core.progress import LogSteps, StepSink
from virtbackup.core.shrink_plan import ShrinkOptions
from virtbackup.engine.datapath.disk_backup import DiskSource
from virtbackup.engine.methods.image_source import StableImages
from virtbackup.engine.shrink.guest_reclaim import CONVERT_TIMEOUT, reclaim, throwaway_overlay

log = logging.getLogger(__name__)

FORMATS = ("raw", "qcow2")
# Room an overlay takes beyond the data it holds (metadata, the zeroes of a filesystem
# that cannot trim are not counted: they are rare and qemu keeps them as zero clusters).
OVERLAY_ROOM = 64 * 1024 * 1024


@dataclass(frozen=True)
class SkipFree:
    """Where the overlays and compacted copies go (a private directory is made there)."""

    tmp_dir: Path
    appliance_timeout: float = 300.0  # seconds the appliance launch may take


@dataclass(frozen=True)
class CompactedDisks:
    sources: tuple[DiskSource, ...]  # what the data path streams, in the window's order
    warnings: tuple[str, ...]  # disks that fell back to the plain stream, and why


def eligibility(image: DiskSource) -> str | None:
    """Why `image` cannot have its free space skipped, or None when it can."""
    if image.nbd is not None:
        return "read over NBD from the backup job"
    if image.format not in FORMATS:
        return f"format {image.format} is not supported (raw and qcow2 are)"
    if image.backing_chain:
        return "has a backing file: its top image is streamed as it is"
    try:
        mode = os.stat(image.path).st_mode
    except OSError as err:
        return f"cannot be read: {err.strerror}"
    if not stat.S_ISREG(mode):
        return "is a block device"
    return None


@contextmanager
def compacted(
    window: StableImages,
    options: SkipFree | None,
    steps: StepSink,
) -> Iterator[CompactedDisks]:
    """The disks to stream: compacted temporary copies where possible (see module doc).
    With `options` None nothing is done and the window's images come back as they are."""
    sources = window.images
    if options is None:
        yield CompactedDisks(sources, ())
        return
    domain = window.domain_name
    warnings: list[str] = []
    chosen: list[DiskSource] = []
    for image in window.images:
        reason = eligibility(image)
        if reason:
            warnings.append(f"{image.target}: --skip-free: {reason}; backed up in full")
        else:
            chosen.append(image)
    if chosen:
        problem = _space_problem(chosen, options.tmp_dir)
        if problem:
            warnings.append(f"--skip-free: {problem}; backed up in full")
            chosen = []
    for warning in warnings:
        steps.warning(domain, warning)
    if not chosen:
        yield CompactedDisks(sources, tuple(warnings))
        return
    remove_leftovers(options.tmp_dir)
    with held_workdir(options.tmp_dir) as workdir:
        copies = _compact(domain, chosen, workdir, steps, warnings, options.appliance_timeout)
        yield CompactedDisks(tuple(_swapped(source, copies) for source in sources), tuple(warnings))


def _swapped(source: DiskSource, copies: dict[str, Path]) -> DiskSource:
    copy = copies.get(source.target)
    if copy is None:
        return source
    return replace(source, path=copy, origin=source.path, free_space_skipped=True)


def _space_problem(images: Sequence[DiskSource], tmp_dir: Path) -> str | None:
    """Worst case: each copy as large as its image's allocated bytes, plus the overlays."""
    need = sum((allocated_bytes(str(i.path)) or 0) + OVERLAY_ROOM for i in images)
    try:
        free = shutil.disk_usage(tmp_dir).free
    except OSError as err:
        return f"temporary directory {tmp_dir}: {err.strerror}"
    if free < need:
        return (
            f"{tmp_dir} has {free // 2**20} MiB free, up to {need // 2**20} MiB needed for "
            "the temporary copies"
        )
    return None


def _compact(
    domain: str,
    images: Sequence[DiskSource],
    workdir: Path,
    steps: StepSink,
    warnings: list[str],
    launch_timeout: float,
) -> dict[str, Path]:
    """target -> compacted copy; {} (and a warning) when the appliance cannot do its work."""
    overlays = [
        throwaway_overlay(image.target, image.path, image.format, workdir) for image in images
    ]
    steps.step(domain, "--skip-free: trimming the guest filesystems in a throw-away overlay")
    try:
        with open_appliance(
            [Drive(str(overlay), "qcow2") for overlay in overlays],
            discard="besteffort",
            launch_timeout=launch_timeout,
        ) as app:
            notes = reclaim(
                app,
                [image.target for image in images],
                ShrinkOptions(),
                LogSteps(prefix="--skip-free: "),  # the backup reports its own steps
                domain,
                zero_fallback=True,
            )
    except Interrupted:
        raise
    except (VirtbackupError, RuntimeError) as err:
        message = err.message if isinstance(err, VirtbackupError) else str(err).strip()
        warning = f"--skip-free: {message}; backed up in full"
        steps.warning(domain, warning)
        warnings.append(warning)
        return {}
    for note in notes:
        log.info("%s: --skip-free: %s", domain, note)
    copies = {}
    for image, overlay in zip(images, overlays, strict=True):
        copy = workdir / f"{image.target}.{image.format}"
        steps.step(domain, f"--skip-free: writing the used blocks of {image.target}")
        argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", image.format]
        if image.format == "qcow2":
            argv += ["-o", "compat=1.1"]
        runner.run([*argv, str(overlay), str(copy)], timeout=CONVERT_TIMEOUT)
        overlay.unlink()  # its room is free for the next disk's copy
        copies[image.target] = copy
    return copies
