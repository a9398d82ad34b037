"""A backup's guest filesystems, read through the libguestfs appliance from the backup's
NBD export (engine/datapath/nbd_serve.py): list them, copy files and directories out.

Every filesystem is mounted read-only under its name (core/guest_paths.py). A copy keeps
owner, mode and times; it is made in a private directory inside the target directory and
renamed into place when complete, so a link in the guest is copied as a link, is never
followed, and nothing is written outside the target directory or over what is there.
A read the backup cannot answer (a damaged chunk) fails the copy of that path with the
reason the export gave.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from virtbackup.adapters import guestfs_files
from virtbackup.adapters.guestfs_files import Entry
from virtbackup.adapters.guestfs_launch import DEFAULT_LAUNCH_TIMEOUT
from virtbackup.adapters.guestfs_ops import Appliance, Drive, GuestfsError, open_appliance
from virtbackup.adapters.nbdkit_server import socket_dir
from virtbackup.adapters.runner import run
from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.errors import UsageError
from virtbackup.core.guest_paths import copied_name, filesystem_names, guest_path
from virtbackup.engine.datapath.nbd_serve import ServedDisk, serving_backup
from virtbackup.engine.stores.backup_access import NO_SIGNERS, Trust

log = logging.getLogger(__name__)
STAGING_PREFIX = ".virtbackup-get-"
T = TypeVar("T")


@dataclass
class GuestFiles:
    """The mounted filesystems of one backup; see `guest_files`."""

    appliance: Appliance
    served: list[ServedDisk]
    names: dict[str, str]  # device -> name, mounted at /name
    unmounted: dict[str, str]  # name -> why it could not be mounted

    def ls(self, path: str) -> list[Entry]:
        """The entries of directory `path`, or the entry `path` itself if it is none."""
        path = guest_path(path)
        found = self._reading(path, lambda: guestfs_files.entry(self.appliance, path))
        if not found.is_dir:
            return [found]
        return self._reading(path, lambda: guestfs_files.entries(self.appliance, path))

    def get(self, path: str, to_dir: Path) -> Path:
        """Copy `path` (a file, link or directory tree) to `to_dir`/its name; the copy."""
        path = guest_path(path)
        name = copied_name(path)
        final = to_dir / name
        if os.path.lexists(final):
            raise UsageError(f"{final} exists", "remove it or choose another --to")
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=to_dir))
        try:
            copy = staging / name
            self._reading(path, lambda: self._copy(path, copy))
            if os.path.lexists(final):
                raise UsageError(f"{final} exists", "remove it or choose another --to")
            os.rename(copy, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def _copy(self, path: str, copy: Path) -> None:
        entry = guestfs_files.entry(self.appliance, path)
        if entry.is_link:
            assert entry.link is not None
            os.symlink(entry.link, copy)
        elif entry.is_file:
            guestfs_files.download(self.appliance, path, copy)
        elif entry.is_dir:
            packed = copy.with_name(copy.name + ".tar")
            guestfs_files.tar_out(self.appliance, path, packed)
            copy.mkdir()
            # as root GNU tar keeps owners and modes; it strips leading slashes, refuses
            # `..` and makes links that point away last, as placeholders until then
            argv = ["tar", "-x", "--numeric-owner", "--same-owner", "--same-permissions"]
            run([*argv, "-f", str(packed), "-C", str(copy)])
            packed.unlink()
            self._keep_times(path, copy)
        else:
            raise UsageError(f"{path} is not a file, link or directory: not copied")
        _keep_metadata(copy, entry)

    def _keep_times(self, guest_dir: str, copy: Path) -> None:
        """The guest's times to the nanosecond (tar keeps whole seconds), set deepest
        first so that setting a directory's entries does not change its own."""
        for directory, _dirs, _files in os.walk(copy, topdown=False):
            relative = os.path.relpath(directory, copy)
            guest = guest_dir if relative == "." else f"{guest_dir}/{relative}"
            for entry in guestfs_files.entries(self.appliance, guest):
                target = Path(directory) / entry.name
                if os.path.lexists(target):
                    times = (entry.atime_ns, entry.mtime_ns)
                    os.utime(target, ns=times, follow_symlinks=False)

    def _reading(self, path: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except GuestfsError:
            reasons = [reason for disk in self.served for reason in disk.server.reasons()]
            if reasons:
                raise CorruptBackup(f"cannot read {path}: I/O error", reasons[-1]) from None
            raise


def check_targets_free(paths: list[str], to_dir: Path) -> None:
    """Before anything starts: UsageError when a copy of `paths` would land on something
    in `to_dir`, or two of them on one name."""
    names = [copied_name(path) for path in paths]
    for name in names:
        if os.path.lexists(to_dir / name):
            raise UsageError(f"{to_dir / name} exists", "remove it or choose another --to")
        if names.count(name) > 1:
            raise UsageError(f"two of the paths would both be copied to {to_dir / name}")


def _keep_metadata(copy: Path, entry: Entry) -> None:
    """Owner first (a change of owner clears set-id bits), then mode, then times."""
    os.chown(copy, entry.uid, entry.gid, follow_symlinks=False)
    if not entry.is_link:
        os.chmod(copy, entry.mode & 0o7777)
    os.utime(copy, ns=(entry.atime_ns, entry.mtime_ns), follow_symlinks=False)


@contextmanager
def guest_files(
    backup: Path,
    identity: Path | None = None,
    trust: Trust = NO_SIGNERS,
    launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT,
) -> Iterator[GuestFiles]:
    """The filesystems of the backup directory `backup`, mounted read-only in an
    appliance reading the backup's export, until the block ends."""
    with socket_dir() as sockets, serving_backup(backup, sockets, identity, trust) as served:
        drives = [_drive(disk) for disk in served]
        with open_appliance(drives, launch_timeout=launch_timeout) as appliance:
            targets = [disk.target for disk in served]
            names = filesystem_names(guestfs_files.mountable(appliance), targets)
            failed = guestfs_files.mount_all(appliance, names)
            unmounted = {names[device]: why for device, why in failed.items()}
            for name, why in unmounted.items():
                log.warning("/%s is not shown: it cannot be mounted (%s)", name, why)
            yield GuestFiles(appliance, served, names, unmounted)


def _drive(disk: ServedDisk) -> Drive:
    """The appliance's drive for a served disk; a qcow2 disk that names host files in its
    header is refused (qemu would open them)."""
    named = disk.references.backing_file or disk.references.data_file
    if named is not None:
        raise CorruptBackup(
            f"{disk.target} is a qcow2 image that names the host file {named!r}",
            "restore it and inspect the image by hand",
        )
    return Drive("", disk.format, readonly=True, nbd_socket=str(disk.server.socket))
