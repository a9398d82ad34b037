"""LVM and mounts through their tools: lvs, lvcreate, lvremove, findmnt, mount, umount.

Every call goes through adapters/runner (argument lists, `-v` shows them); the tools'
JSON output is read by core/lvm. Devices are matched to LVs by major:minor, so
/dev/vg/lv, /dev/mapper/vg-lv and /dev/dm-N all resolve alike, without dmsetup.
"""

import logging
import os
import stat
from dataclasses import dataclass, field

from virtbackup.adapters import runner
from virtbackup.core.errors import CommandFailed, MissingComponent
from virtbackup.core.lvm import (
    FINDMNT_COLUMNS,
    LVS_FIELDS,
    DiskOnLv,
    LogicalVolume,
    Mount,
    lv_by_devnum,
    parse_findmnt,
    parse_lvs,
    path_inside,
)

log = logging.getLogger(__name__)

LVM_TIMEOUT = 120.0  # lvcreate suspends the origin; on a busy host that can take a while
MOUNT_TIMEOUT = 120.0
LVS = ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", LVS_FIELDS]


def _env_quiet() -> None:
    # LVM warns about every inherited descriptor; the runner captures its stderr anyway.
    os.environ.setdefault("LVM_SUPPRESS_FD_WARNINGS", "1")


def list_lvs(*names: str) -> list[LogicalVolume]:
    """Every LV of the host (or the named `vg/lv`s that exist; missing ones are left out)."""
    _env_quiet()
    result = runner.run([*LVS, *names], check=not names, timeout=LVM_TIMEOUT)
    volumes = parse_lvs(result.stdout.decode(errors="replace"))
    if names and result.returncode != 0 and not volumes:
        stderr = result.stderr.decode(errors="replace")
        if "Failed to find" not in stderr and "not found" not in stderr:
            raise CommandFailed([*LVS, *names], result.returncode, stderr)
    return volumes


def find_lv(full_name: str) -> LogicalVolume | None:
    found = [lv for lv in list_lvs(full_name) if lv.full_name == full_name]
    return found[0] if found else None


def mount_of(path: str) -> Mount | None:
    """The mount that holds `path` (a file or folder)."""
    out = runner.run_text(
        ["findmnt", "-J", "-o", FINDMNT_COLUMNS, "-T", path], check=False, timeout=MOUNT_TIMEOUT
    )
    mounts = parse_findmnt(out)
    return mounts[-1] if mounts else None


def mounts() -> list[Mount]:
    """The whole mount table."""
    out = runner.run_text(["findmnt", "-J", "-o", FINDMNT_COLUMNS], timeout=MOUNT_TIMEOUT)
    return parse_findmnt(out)


def devnum_of(path: str) -> tuple[int, int] | None:
    """(major, minor) of a block device, None when `path` is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


@dataclass
class LvLookup:
    """Answers "is this disk on an LV?" with one `lvs` for all the disks of a discovery."""

    _volumes: list[LogicalVolume] | None = None
    _failed: str | None = None
    _cache: dict[str, DiskOnLv | None] = field(default_factory=dict)

    def volumes(self) -> list[LogicalVolume]:
        if self._volumes is None:
            self._volumes = list_lvs()
        return self._volumes

    def locate(self, source_type: str, path: str) -> DiskOnLv | None:
        """The LV under a file disk's filesystem or of a block disk; None: not on LVM.

        Raises MissingComponent without the LVM tools, CommandFailed, LvmOutputError.
        """
        real = os.path.realpath(path)
        if real in self._cache:
            return self._cache[real]
        found: DiskOnLv | None = None
        devnum = devnum_of(real)
        if devnum is not None:
            lv = lv_by_devnum(self.volumes(), devnum)
            found = DiskOnLv(lv, None, None) if lv else None
        elif source_type != "block":
            mount = mount_of(real)
            if mount is not None and mount.devnum is not None:
                lv = lv_by_devnum(self.volumes(), mount.devnum)
                if lv is not None:
                    found = DiskOnLv(lv, path_inside(real, mount), mount.fstype)
        self._cache[real] = found
        return found

    def on_lv(self, source_type: str, path: str | None) -> bool | None:
        """For discovery: True/False, or None when it cannot be told (a tool failed).
        A host without the LVM tools has no LVs: False."""
        if path is None or source_type not in ("file", "block", "volume"):
            return None
        try:
            return self.locate(source_type, path) is not None
        except MissingComponent:
            return False
        except Exception as err:  # discovery goes on whatever LVM says
            log.debug("cannot tell whether %s is on LVM: %s", path, err)
            return None

    def lv_name(self, source_type: str, path: str | None) -> str | None:
        try:
            found = self.locate(source_type, path) if path else None
        except Exception:
            return None
        return found.lv.full_name if found else None


# -- changes ------------------------------------------------------------------------------


def create_snapshot(origin: LogicalVolume, name: str, size: int) -> None:
    _env_quiet()
    runner.run(
        ["lvcreate", "--yes", "-s", "-L", f"{size}b", "-n", name, origin.full_name],
        timeout=LVM_TIMEOUT,
    )


def remove_lv(full_name: str) -> None:
    _env_quiet()
    runner.run(["lvremove", "-f", full_name], timeout=LVM_TIMEOUT)


def mount_ro(device: str, target: str, fstype: str, options: list[str]) -> None:
    runner.run(
        ["mount", "-t", fstype, "-o", ",".join(options), device, target], timeout=MOUNT_TIMEOUT
    )


def unmount(target: str) -> None:
    runner.run(["umount", target], timeout=MOUNT_TIMEOUT)
