"""How `files` and `mount` name a backup's filesystems and the paths in them (pure).

Every filesystem the guest had is mounted read-only under a name of its own, so that
one path names one file whatever the guest's layout (several disks, partitions, LVM):

    /vda1/etc/hostname       partition 1 of disk vda (the appliance's /dev/sda1)
    /vdb/data.txt            a filesystem on the whole of disk vdb
    /vg-data/srv/www         logical volume data of volume group vg (/dev/vg/data)

The appliance names the backup's disks /dev/sda, /dev/sdb, ... in the order they are
added; they are renamed after the disk targets of the backup.
"""

import posixpath
import string

from virtbackup.core.errors import UsageError


def filesystem_name(device: str, targets: list[str]) -> str:
    """The name of the filesystem on appliance device `device`, the disks added in the
    order of `targets` (pure)."""
    name = device.removeprefix("/dev/")
    if name.startswith("sd") and len(name) > 2 and name[2] in string.ascii_lowercase:
        number = ord(name[2]) - ord("a")
        rest = name[3:]
        if number < len(targets) and (rest == "" or rest.isdigit()):
            return targets[number] + rest
    return name.replace("/", "-")


def filesystem_names(devices: list[str], targets: list[str]) -> dict[str, str]:
    """Device -> name for every device; UsageError if two would share a name."""
    names: dict[str, str] = {}
    for device in devices:
        name = filesystem_name(device, targets)
        if name in names.values():
            raise UsageError(f"two filesystems of the backup would both be /{name}")
        names[device] = name
    return names


def guest_path(path: str) -> str:
    """`path` made absolute and normal (no `.`, `..` or doubled slashes); UsageError for
    one that climbs out of the root."""
    if "\0" in path:
        raise UsageError(f"{path!r} is not a path")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"{path} contains '..'", "give the path without it")
    return posixpath.join("/", *parts)


def copied_name(path: str) -> str:
    """The name a copy of guest path `path` gets in the target directory; UsageError for
    the root, which is not one filesystem."""
    name = posixpath.basename(guest_path(path))
    if not name:
        raise UsageError("/ holds the backup's filesystems", "get /NAME or a path inside one")
    return name
