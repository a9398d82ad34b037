"""Undo LVM snapshots and mounts, from what is observed now; sweep leftovers by name.

The same functions undo a record at the end of a run and in `virtbackup clean` (through
engine/runs/undo's Undoer), so each one looks first: a mount that is gone, or a snapshot that
was already removed, is simply done. `sweep_leftovers` finds what a run that died
between its change and its journal write could leave (or what a lost journal names):
mounts below the private mount folder and snapshots named `vbsnap-...`; it runs only
while this process holds the LVM lock, so no live run's snapshot is touched.
"""

import errno
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from virtbackup.adapters import lvm, runner
from virtbackup.adapters.locks import FileLock
from virtbackup.core.errors import CommandFailed, MissingComponent, VirtbackupError
from virtbackup.core.lvm import (
    LvmRecord,
    LvmSnapshotRecord,
    MountRecord,
    is_ours,
)
from virtbackup.core.progress import StepSink

log = logging.getLogger(__name__)

# Snapshots are mounted below here, one folder per snapshot; gone after a reboot.
DEFAULT_MOUNT_ROOT = Path("/run/virtbackup/lvm")
LOCK_NAME = "lvm-snapshots.lock"


class LvmUndoBlocked(VirtbackupError):
    """A snapshot or mount cannot be removed safely now; the journal keeps it."""


def lvm_lock(state_dir: Path) -> FileLock:
    """Held by every run while it has LVM snapshots, and by the sweep."""
    return FileLock(state_dir / "locks" / LOCK_NAME, "LVM snapshots of this host")


def undo_lvm_record(record: LvmRecord, steps: StepSink, who: str, dry_run: bool = False) -> None:
    if isinstance(record, MountRecord):
        _undo_mount(record, steps, who, dry_run)
    else:
        _undo_snapshot(record, steps, who, dry_run)


def _undo_mount(record: MountRecord, steps: StepSink, who: str, dry_run: bool) -> None:
    mounted = [m for m in lvm.mounts() if m.target == record.target]
    for _ in mounted:  # stacked mounts: one umount each
        if dry_run:
            steps.step(who, f"would unmount {record.target}")
            return
        steps.step(who, f"unmount {record.target}")
        lvm.unmount(record.target)
    if not dry_run:
        _remove_folder(Path(record.target))


def _remove_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno != errno.ENOTEMPTY:
            raise
        log.warning("mount folder %s is not empty: left alone", folder)


def _undo_snapshot(record: LvmSnapshotRecord, steps: StepSink, who: str, dry_run: bool) -> None:
    full = f"{record.vg}/{record.name}"
    snapshot = lvm.find_lv(full)
    if snapshot is None:
        return
    if not is_ours(snapshot):
        raise LvmUndoBlocked(
            f"{full} is not a virtbackup snapshot (attributes {snapshot.attr}): left alone"
        )
    if snapshot.devnum is not None:
        for mount in lvm.mounts():
            if mount.devnum == snapshot.devnum:
                if dry_run:
                    steps.step(who, f"would unmount {mount.target} ({full})")
                    continue
                steps.step(who, f"unmount {mount.target} ({full})")
                lvm.unmount(mount.target)
    if dry_run:
        steps.step(who, f"would remove LVM snapshot {full}")
        return
    steps.step(who, f"remove LVM snapshot {full}")
    lvm.remove_lv(full)


def sweep_leftovers(
    state_dir: Path,
    steps: StepSink,
    *,
    dry_run: bool = False,
    mount_root: Path = DEFAULT_MOUNT_ROOT,
    lock_held: bool = False,
) -> list[str]:
    """Unmount our mounts and remove our snapshots that no live run holds.

    Returns the problems (what could not be removed). Without the LVM tools, or while
    another run holds the LVM lock, there is nothing to do.
    """
    lock = lvm_lock(state_dir)
    if not lock_held and not lock.try_acquire():
        return []
    try:
        return _sweep(steps, dry_run, mount_root)
    finally:
        if not lock_held:
            lock.release()


def _sweep(steps: StepSink, dry_run: bool, mount_root: Path) -> list[str]:
    problems: list[str] = []
    try:
        table = lvm.mounts()
        root = str(mount_root).rstrip("/") + "/"
        ours = [m for m in table if m.target.startswith(root)]
        snapshots = [lv for lv in lvm.list_lvs() if is_ours(lv)] if _have_lvm() else []
    except (CommandFailed, MissingComponent) as err:
        log.warning("cannot look for leftover LVM snapshots: %s", err)
        return []
    leftover_devnums = {lv.devnum for lv in snapshots if lv.devnum}
    ours += [m for m in table if m.devnum in leftover_devnums and m not in ours]
    for mount in reversed(ours):  # deepest first
        unmount = functools.partial(lvm.unmount, mount.target)
        action = f"unmount leftover {mount.target} ({mount.source})"
        _remove(steps, dry_run, problems, action, unmount, f"cannot unmount {mount.target}")
    if not dry_run and mount_root.is_dir():
        for folder in sorted(mount_root.iterdir(), reverse=True):
            if folder.is_dir() and not os.path.ismount(folder):
                _remove_folder(folder)
    for lv in snapshots:
        remove = functools.partial(lvm.remove_lv, lv.full_name)
        action = f"remove leftover LVM snapshot {lv.full_name} of {lv.vg}/{lv.origin}"
        _remove(steps, dry_run, problems, action, remove, f"cannot remove {lv.full_name}")
    return problems


def _remove(
    steps: StepSink,
    dry_run: bool,
    problems: list[str],
    action: str,
    remove: Callable[[], None],
    failure: str,
) -> None:
    """One leftover of the sweep: said, and removed unless this is a dry run; a failure
    is kept in `problems` and warned about, and the sweep goes on."""
    if dry_run:
        steps.step("lvm", "would " + action)
        return
    steps.step("lvm", action)
    try:
        remove()
    except VirtbackupError as err:
        problems.append(f"{failure}: {err}")
        steps.warning("lvm", problems[-1])


def _have_lvm() -> bool:
    try:
        runner.require_program("lvs")
    except MissingComponent:
        return False
    return True
