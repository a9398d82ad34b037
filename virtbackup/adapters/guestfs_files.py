"""Reading a guest's files through a launched appliance (adapters/guestfs_ops): every
filesystem mounted read-only under a name of its own, directory listings with their
metadata, files downloaded and directories packed as tar. Failures inside the appliance
(an unreadable block: an I/O error) become GuestfsError with the appliance's first line.
"""

import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from virtbackup.adapters.guestfs_ops import Appliance, GuestfsError, first_line

T = TypeVar("T")
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
