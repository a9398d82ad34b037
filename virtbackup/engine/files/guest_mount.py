"""`mount`: a backup's filesystems browsed read-only at a local directory, named as
`files` names them (core/guest_paths.py), until `umount` or a signal ends it; then the
appliance and the export stop and nothing stays mounted."""

from collections.abc import Callable
from pathlib import Path

from virtbackup.adapters.fuse_mounts import fuse_type, fuse_unmount
from virtbackup.adapters.guestfs_files import serve_mount
from virtbackup.adapters.guestfs_launch import DEFAULT_LAUNCH_TIMEOUT
from virtbackup.core.errors import UsageError
from virtbackup.engine.files.guest_files import guest_files
from virtbackup.engine.stores.backup_access import Trust


def mount_backup(
    backup: Path,
    mountpoint: Path,
    identity: Path | None,
    trust: Trust,
    on_mounted: Callable[[], None],
    launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT,
) -> None:
    """Mount until unmounted; Interrupted (after unmounting) on a signal."""
    if not mountpoint.is_dir() or mountpoint.is_symlink():
        raise UsageError(f"{mountpoint} is not a directory", "create an empty directory first")
    if any(mountpoint.iterdir()) or fuse_type(mountpoint) is not None:
        raise UsageError(f"{mountpoint} is not empty", "give an empty directory")
    with guest_files(backup, identity, trust, launch_timeout) as guest:
        serve_mount(guest.appliance, mountpoint, on_mounted)


def unmount_backup(mountpoint: Path) -> None:
    """End the mount at `mountpoint`; UsageError when nothing of ours is mounted there."""
    if fuse_type(mountpoint) is None:
        raise UsageError(f"no backup is mounted at {mountpoint}")
    fuse_unmount(mountpoint)
