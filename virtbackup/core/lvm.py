"""LVM facts and decisions as plain data: what `lvs` and `findmnt` say, snapshot sizes,
names and mount options, whether a snapshot overflowed, and the undo records.

adapters/lvm runs the tools (JSON output, `--units b --nosuffix`) and hands the text to
the parsers here; engine/methods/lvm acts on the decisions. Nothing here does I/O.

Snapshots virtbackup makes are named `vbsnap-<origin>-<run id>`: the prefix tells a
leftover of an earlier run (kill -9, power loss) from anything an admin made, so the
next run and `virtbackup clean` can find and remove them even without a journal.
"""

import json
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from virtbackup.core.config import SnapshotSize
from virtbackup.core.errors import UsageError, VirtbackupError
from virtbackup.core.sizes import human_size

SNAPSHOT_PREFIX = "vbsnap-"
# The journal of a run-wide set of snapshots is kept under this pseudo domain uuid.
RUN_JOURNAL_UUID = "lvm-snapshots"
MAX_LV_NAME = 127  # LVM's limit for an LV name
WARN_PERCENT = 80.0  # a snapshot this full gets a warning while it is read

# The fields adapters/lvm asks `lvs` for; parse_lvs reads them.
LVS_FIELDS = (
    "lv_name,vg_name,lv_path,lv_dm_path,lv_size,lv_attr,origin,snap_percent,"
    "vg_free,vg_extent_size,lv_kernel_major,lv_kernel_minor"
)
FINDMNT_COLUMNS = "TARGET,SOURCE,FSTYPE,MAJ:MIN,FSROOT"


class LvmError(VirtbackupError):
    """An LVM snapshot could not be made, mounted, read or removed (exit 1)."""


class NotOnLvm(UsageError):
    """The lvm method was asked for a disk that is not on an LVM logical volume."""


class SnapshotSpaceError(LvmError):
    """The volume group has too few free extents for the snapshot."""


class SnapshotOverflow(LvmError):
    """The snapshot filled up or became invalid while it was read: the copy is useless."""


class LvmOutputError(LvmError):
    """`lvs` or `findmnt` printed something we cannot read."""


# -- facts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    vg: str
    path: str  # /dev/vg/lv
    dm_path: str  # /dev/mapper/vg-lv
    size: int  # bytes
    attr: str  # lv_attr, e.g. "owi-aos---"
    origin: str | None  # for a snapshot: the LV it is a snapshot of
    snap_percent: float | None  # for a snapshot: how full its copy-on-write space is
    vg_free: int  # bytes free in the volume group
    extent_size: int  # bytes per extent of the volume group
    devnum: tuple[int, int] | None  # (major, minor) when active

    @property
    def full_name(self) -> str:
        return f"{self.vg}/{self.name}"

    @property
    def is_snapshot(self) -> bool:
        return self.attr[:1] in ("s", "S")

    @property
    def is_thin(self) -> bool:
        return self.attr[:1] == "V"

    @property
    def active(self) -> bool:
        return self.attr[4:5] not in ("", "-")


@dataclass(frozen=True)
class Mount:
    target: str  # where it is mounted
    source: str  # the device, as the mount table names it
    fstype: str
    devnum: tuple[int, int] | None
    fsroot: str  # the folder of the filesystem mounted at `target` ("/" but for binds)


@dataclass(frozen=True)
class DiskOnLv:
    """Where the data of one disk lives on LVM."""

    lv: LogicalVolume
    inner_path: str | None  # file disks: the image's path inside the LV's filesystem
    fstype: str | None  # file disks: the filesystem of the LV


def _int(value: Any) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(float(text)) if text else None


def _float(value: Any) -> float | None:
    text = str(value).strip() if value is not None else ""
    return float(text) if text else None


def _report_rows(text: str, kind: str) -> list[Mapping[str, Any]]:
    try:
        data = json.loads(text)
        rows: list[Mapping[str, Any]] = []
        for report in data["report"]:
            rows += report.get(kind, [])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise LvmOutputError(f"cannot read the JSON report of the LVM tools: {err}") from None
    return rows


def parse_lvs(text: str) -> list[LogicalVolume]:
    """`lvs --reportformat json --units b --nosuffix -o LVS_FIELDS` -> volumes."""
    volumes = []
    for row in _report_rows(text, "lv"):
        try:
            major, minor = _int(row.get("lv_kernel_major")), _int(row.get("lv_kernel_minor"))
            volumes.append(
                LogicalVolume(
                    name=str(row["lv_name"]),
                    vg=str(row["vg_name"]),
                    path=str(row.get("lv_path") or f"/dev/{row['vg_name']}/{row['lv_name']}"),
                    dm_path=str(row.get("lv_dm_path") or ""),
                    size=_int(row.get("lv_size")) or 0,
                    attr=str(row.get("lv_attr") or ""),
                    origin=str(row.get("origin") or "") or None,
                    snap_percent=_float(row.get("snap_percent")),
                    vg_free=_int(row.get("vg_free")) or 0,
                    extent_size=_int(row.get("vg_extent_size")) or 0,
                    devnum=(major, minor)
                    if major is not None and minor is not None and major >= 0 and minor >= 0
                    else None,
                )
            )
        except (KeyError, ValueError) as err:
            raise LvmOutputError(f"cannot read an lvs row {dict(row)}: {err}") from None
    return volumes


def parse_findmnt(text: str) -> list[Mount]:
    """`findmnt -J -o FINDMNT_COLUMNS` (empty output: nothing found) -> mounts."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
        return [_mount(entry) for entry in _walk(data["filesystems"])]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise LvmOutputError(f"cannot read the JSON output of findmnt: {err}") from None


def _walk(entries: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """findmnt nests child mounts under `children` unless --list is given."""
    flat: list[Mapping[str, Any]] = []
    for entry in entries:
        flat.append(entry)
        flat += _walk(entry.get("children", []))
    return flat


def _mount(entry: Mapping[str, Any]) -> Mount:
    majmin = str(entry.get("maj:min") or "")
    devnum = None
    if majmin.count(":") == 1:
        major, minor = majmin.split(":")
        devnum = (int(major), int(minor))
    source = str(entry.get("source") or "")
    fsroot = str(entry.get("fsroot") or "/")
    # A bind mount's source reads "/dev/mapper/vg-lv[/images]".
    if source.endswith("]") and "[" in source:
        source = source[: source.index("[")]
    return Mount(str(entry["target"]), source, str(entry.get("fstype") or ""), devnum, fsroot)


def lv_by_devnum(volumes: list[LogicalVolume], devnum: tuple[int, int]) -> LogicalVolume | None:
    for lv in volumes:
        if lv.devnum == devnum:
            return lv
    return None


def path_inside(real_path: str, mount: Mount) -> str:
    """The path of `real_path` (no symlinks) inside the filesystem mounted at `mount`."""
    relative = posixpath.relpath(real_path, mount.target)
    if relative == ".." or relative.startswith("../"):
        raise ValueError(f"{real_path} is not below {mount.target}")
    inner = posixpath.normpath(posixpath.join(mount.fsroot, relative))
    return inner if inner.startswith("/") else "/" + inner


# -- decisions ------------------------------------------------------------------------------


def snapshot_bytes(size: SnapshotSize, origin_size: int, extent_size: int) -> int:
    """The copy-on-write size to give a snapshot of an LV of `origin_size` bytes: the share
    or the fixed size asked for, in whole extents, at least one extent, and no more than
    the origin needs (LVM cuts a bigger one down itself)."""
    extent = max(extent_size, 512)
    if size.bytes is not None:
        wanted = size.bytes
    else:
        wanted = math.ceil(origin_size * (size.percent or 0.0) / 100.0)
    wanted = min(wanted, origin_size + extent)
    return max(1, math.ceil(wanted / extent)) * extent


def check_fits(origin: LogicalVolume, need: int, free: int) -> None:
    """Raise SnapshotSpaceError unless `need` bytes are free in the origin's VG."""
    if need > free:
        raise SnapshotSpaceError(
            f"volume group {origin.vg} has {human_size(free)} free, the snapshot of "
            f"{origin.full_name} needs {human_size(need)}",
            "free extents in the volume group (vgextend, lvreduce) or choose a smaller "
            "snapshot size (--snapshot-size, snapshot_size)",
        )


def snapshot_name(origin: str, run_id: str, serial: int = 1) -> str:
    suffix = f"-{run_id}" + (f"-{serial}" if serial > 1 else "")
    room = MAX_LV_NAME - len(SNAPSHOT_PREFIX) - len(suffix)
    return f"{SNAPSHOT_PREFIX}{origin[:room]}{suffix}"


def is_ours(lv: LogicalVolume) -> bool:
    """A snapshot virtbackup made (and a leftover, when no run holds the LVM lock)."""
    return lv.is_snapshot and lv.name.startswith(SNAPSHOT_PREFIX)


def mount_options(fstype: str) -> list[str]:
    """Read-only options that mount a snapshot of a filesystem that was mounted when it
    was taken: ext3/4 would replay its journal (noload skips it: the snapshot was taken
    on a frozen, flushed filesystem), xfs refuses a second filesystem with the same uuid."""
    options = ["ro", "nodev", "nosuid", "noexec"]
    if fstype in ("ext3", "ext4"):
        options.append("noload")
    elif fstype == "xfs":
        options.append("nouuid")
    return options


UNSUPPORTED_FILESYSTEMS = {
    "btrfs": "a snapshot of a mounted btrfs has the same fsid and must not be mounted "
    "beside it: use btrfs subvolume snapshots or --method snapshot",
}


def overflow_problem(snapshot: LogicalVolume | None) -> str | None:
    """Why a snapshot can no longer be trusted (None: it is fine)."""
    if snapshot is None:
        return "disappeared"
    if snapshot.attr[4:5] in ("I", "S"):
        return "overflowed and became invalid"
    if snapshot.snap_percent is not None and snapshot.snap_percent >= 100.0:
        return "overflowed (100 % of its copy-on-write space used)"
    return None


# -- undo records (the journal format is in core/undo) -------------------------------------


@dataclass(frozen=True)
class LvmSnapshotRecord:
    """An LVM snapshot this run created: unmount it wherever it is, then lvremove it."""

    kind: ClassVar[str] = "lvm-snapshot"
    vg: str
    name: str  # the snapshot LV, always SNAPSHOT_PREFIX...
    origin: str  # the LV it is a snapshot of

    def fields(self) -> dict[str, str]:
        return {"vg": self.vg, "name": self.name, "origin": self.origin}

    def describe(self) -> str:
        return f"LVM snapshot {self.vg}/{self.name} of {self.vg}/{self.origin}"


@dataclass(frozen=True)
class MountRecord:
    """A filesystem this run mounted on a private folder: unmount it, remove the folder."""

    kind: ClassVar[str] = "mount"
    target: str  # the folder
    source: str  # the device mounted there

    def fields(self) -> dict[str, str]:
        return {"target": self.target, "source": self.source}

    def describe(self) -> str:
        return f"mount of {self.source} on {self.target}"


LvmRecord = LvmSnapshotRecord | MountRecord
LVM_RECORD_TYPES = (LvmSnapshotRecord, MountRecord)


def lvm_record_from_dict(data: Mapping[str, Any]) -> LvmRecord | None:
    """The record of `data` if it is one of ours (None: another kind). ValueError if bad."""

    def text(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key!r} missing or not a string")
        return value

    if data.get("kind") == LvmSnapshotRecord.kind:
        name = text("name")
        if not name.startswith(SNAPSHOT_PREFIX):
            raise ValueError(f"snapshot name {name!r} lacks the prefix {SNAPSHOT_PREFIX!r}")
        return LvmSnapshotRecord(vg=text("vg"), name=name, origin=text("origin"))
    if data.get("kind") == MountRecord.kind:
        return MountRecord(target=text("target"), source=text("source"))
    return None
