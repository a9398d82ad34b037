"""Reading a guest's files through a launched appliance (adapters/guestfs_ops): every
filesystem mounted read-only under a name of its own, directory listings with their
metadata, files downloaded and directories packed as tar, and all of it shown at a local
mount point (FUSE). Failures inside the appliance
(an unreadable block: an I/O error) become GuestfsError with the appliance's first line.
"""

import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from virtbackup.adapters.fuse_mounts import fuse_type, fuse_unmount
from virtbackup.adapters.guestfs_ops import Appliance, GuestfsError, first_line

T = TypeVar("T")
UNMOUNT_WAIT = 30.0  # seconds for the FUSE loop to end once unmounted
NOT_MOUNTABLE = {"swap", "unknown", "", "luks", "crypto_LUKS", "lvm2_member"}


@dataclass(frozen=True)
class Entry:
    """One directory entry as the guest's filesystem records it."""

    name: str
    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    link: str | None = None  # where a symbolic link points

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def mount_all(appliance: Appliance, names: dict[str, str]) -> dict[str, str]:
    """Mount each filesystem in `names` (device -> name) read-only at /<name>; the
    devices that could not be mounted, with why."""
    failed: dict[str, str] = {}
    for device, name in sorted(names.items(), key=lambda item: item[1]):
        try:
            appliance.g.mkmountpoint(f"/{name}")
            appliance.g.mount_ro(device, f"/{name}")
        except RuntimeError as err:
            failed[device] = first_line(err)
    return failed


def mountable(appliance: Appliance) -> list[str]:
    """The devices holding a filesystem that can be mounted (not swap, not LVM's own)."""
    return [dev for dev, kind in appliance.filesystems().items() if kind not in NOT_MOUNTABLE]


def entry(appliance: Appliance, path: str) -> Entry:
    """The entry at `path` itself (a link is not followed)."""
    info = _call(lambda: appliance.g.lstatns(path), path)
    return _entry(appliance, path.rstrip("/").rpartition("/")[2] or "/", path, info)


def entries(appliance: Appliance, directory: str) -> list[Entry]:
    """The entries of `directory`, by name."""
    names = sorted(_call(lambda: appliance.g.ls(directory), directory))
    infos = _call(lambda: appliance.g.lstatnslist(directory, names), directory)
    return [
        _entry(appliance, name, f"{directory.rstrip('/')}/{name}", info)
        for name, info in zip(names, infos, strict=True)
    ]


def download(appliance: Appliance, path: str, local: Path) -> None:
    _call(lambda: appliance.g.download(path, str(local)), path)


def tar_out(appliance: Appliance, directory: str, local: Path) -> None:
    """The directory's tree as a tar file, numeric owners and extended attributes kept."""
    _call(lambda: appliance.g.tar_out(directory, str(local), numericowner=True), directory)


def _entry(appliance: Appliance, name: str, path: str, info: dict[str, int]) -> Entry:
    mode = int(info["st_mode"])
    link = _call(lambda: appliance.g.readlink(path), path) if stat.S_ISLNK(mode) else None
    return Entry(
        name=name,
        mode=mode,
        uid=int(info["st_uid"]),
        gid=int(info["st_gid"]),
        size=int(info["st_size"]),
        mtime_ns=int(info["st_mtime_sec"]) * 10**9 + int(info["st_mtime_nsec"]),
        atime_ns=int(info["st_atime_sec"]) * 10**9 + int(info["st_atime_nsec"]),
        link=link,
    )


def _call(action: Callable[[], T], path: str) -> T:
    try:
        return action()
    except RuntimeError as err:
        raise GuestfsError(f"{path}: {first_line(err)}") from None


def serve_mount(appliance: Appliance, mountpoint: Path, on_mounted: Callable[[], None]) -> None:
    """Show the mounted filesystems read-only at `mountpoint` (FUSE) until it is
    unmounted (fusermount -u) or the caller is interrupted, which unmounts it.

    libguestfs's FUSE loop holds the interpreter's lock for as long as the mount lasts,
    so it runs in a child process (which ignores stop signals): this one stays free to
    take signals and end the mount. The handle is used again only once the child is gone.
    """
    _call(lambda: appliance.g.mount_local(str(mountpoint), readonly=True), str(mountpoint))
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's coverage is not collected)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        try:
            appliance.g.mount_local_run()
            os._exit(0)
        except BaseException:
            os._exit(1)
    status = None
    try:
        while fuse_type(mountpoint) is None:
            if os.waitpid(child, os.WNOHANG) != (0, 0):
                raise GuestfsError(f"the mount at {mountpoint} ended before it was shown")
            time.sleep(0.1)
        on_mounted()
        status = os.waitpid(child, 0)[1]
    finally:
        if status is None:
            if fuse_type(mountpoint) is not None:
                fuse_unmount(mountpoint)
            _reap(child)
    if status != 0:
        raise GuestfsError(f"the mount at {mountpoint} failed (see -v)")


def _reap(child: int) -> None:
    """Wait for the FUSE child to end after its mount is gone; kill it if it hangs."""
    deadline = time.monotonic() + UNMOUNT_WAIT
    while time.monotonic() < deadline:
        try:
            if os.waitpid(child, os.WNOHANG) != (0, 0):
                return
        except ChildProcessError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
