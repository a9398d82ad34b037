"""Free what a guest does not use, inside a libguestfs appliance: trim every filesystem,
discard swap, reclaim the free extents of guest volume groups (`reclaim`); the throw-away
overlay that takes those writes when the image itself must stay untouched; and the
estimate of what that would free. Used by `shrink` (engine/shrink/) and by skip-free
backups (engine/methods/skip_free).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.adapters.guestfs_ops import Appliance, Drive, open_appliance
from virtbackup.adapters.images import allocated_bytes
from virtbackup.core.progress import StageSink
from virtbackup.core.shrink_plan import ShrinkOptions, guest_name, is_ignored, vg_ignored

CONVERT_TIMEOUT = 24 * 3600.0  # qemu-img convert of a compacted overlay


@dataclass(frozen=True)
class Image:
    """One disk to shrink: where it is and what it is."""

    target: str
    path: str
    format: str
    virtual_size: int | None = None


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
