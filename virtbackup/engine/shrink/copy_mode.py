"""Copy mode of `virtbackup shrink` (`--to DIR` or `--convert FORMAT`): reclaim on a
throw-away overlay, then `qemu-img convert` a compact image under a temporary name,
synced and renamed into place (see engine/shrink/domains)."""

import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.adapters.guestfs_ops import Drive, open_appliance
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import Domain
from virtbackup.adapters.images import allocated_bytes, image_info
from virtbackup.core.progress import StageSink
from virtbackup.core.shrink_plan import DiskOutcome, NotEnoughSpace, ShrinkOptions, ShrinkRefused
from virtbackup.core.sizes import human_size
from virtbackup.engine.shrink.guest_reclaim import (
    CONVERT_TIMEOUT,
    Image,
    reclaim,
    throwaway_overlay,
)

DEFAULT_TMP = Path("/var/tmp")
PARTIAL_SUFFIX = ".virtbackup-partial"


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


def _virtual_size(image: Image) -> int:
    return image_info(image.path, image.format, force_share=False).virtual_size
