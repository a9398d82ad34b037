"""Pure pieces of the backup-API method: the names of a job's socket, scratch files and
checkpoints, and the XML of a pull backup and of its checkpoint.

A job's files are named after the run, so that `clean` can tell ours from anyone
else's: the socket `<socket dir>/<domain uuid>.virtbackup-<run id>.sock`; a scratch file
(the copy-before-write target) next to the image, `<image>.virtbackup-<run id>.scratch`,
or in a configured overlay directory `<domain uuid>-<target>.virtbackup-<run id>.scratch`;
a disk that is no file (a block device, a network source) has no directory of its own
to put it in: without an overlay directory its scratch file goes under that name into
the socket directory, which qemu can write.
A checkpoint is named `virtbackup-<run id>` after the run that made it, and recorded in
that run's manifest.

A shut-off domain's qcow2 disks are served by one qemu-nbd each (adapters/qemu_nbd), on
`<socket dir>/<domain uuid>-<target>.virtbackup-<run id>.sock`; its checkpoint is a
bitmap added to each image plus libvirt's metadata for it, redefined (libvirt 9 makes no
checkpoint of an inactive domain itself).
"""

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath

from virtbackup.core.overlays import OVERLAY_MARK, run_file_path

# qemu's user must be able to create the socket there; libvirt's own state directory is.
SOCKET_DIR = PurePath("/var/lib/libvirt/qemu")
CHECKPOINT_PREFIX = "virtbackup-"
SCRATCH_SUFFIX = ".scratch"
SOCKET_SUFFIX = ".sock"
KEEP_CHECKPOINTS = 4  # of ours per domain: the newest backup's and a few before it
_CHECKPOINT = re.compile(rf"{CHECKPOINT_PREFIX}\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}")


def socket_path(domain_uuid: str, run_id: str, directory: PurePath = SOCKET_DIR) -> PurePath:
    return directory / f"{domain_uuid}{OVERLAY_MARK}{run_id}{SOCKET_SUFFIX}"


def offline_socket_path(
    domain_uuid: str, target: str, run_id: str, directory: PurePath = SOCKET_DIR
) -> PurePath:
    return directory / f"{domain_uuid}-{target}{OVERLAY_MARK}{run_id}{SOCKET_SUFFIX}"


def scratch_path(
    image: str | None, target: str, domain_uuid: str, run_id: str, overlay_dir: PurePath | None
) -> PurePath:
    """`image`: the disk's image file; None for a disk that is no file."""
    if image is None:
        overlay_dir = overlay_dir or SOCKET_DIR
    return run_file_path(image or "", target, domain_uuid, run_id, overlay_dir, SCRATCH_SUFFIX)


def checkpoint_name(run_id: str) -> str:
    return f"{CHECKPOINT_PREFIX}{run_id}"


def is_checkpoint_name(name: str) -> bool:
    """Whether `name` is a checkpoint name our runs make (a foreign tool's are not)."""
    return bool(_CHECKPOINT.fullmatch(name))


def checkpoints_to_delete(ours_oldest_first: Sequence[str], keep: int) -> list[str]:
    """Our checkpoints beyond the newest `keep` (deleting one merges its changes into
    the one before it, so the newer ones stay whole)."""
    ours = [name for name in ours_oldest_first if is_checkpoint_name(name)]
    return ours[: max(0, len(ours) - keep)]


def pull_backup_xml(
    socket: str,
    scratch: Mapping[str, str],
    all_targets: Iterable[str],
    since: str | None = None,
    untracked: Iterable[str] = (),
) -> str:
    """A pull backup of the disks in `scratch` (target -> scratch file) served on the
    unix `socket`, every other disk left out; `since`: only the changes since that
    checkpoint are marked dirty (the job still serves every byte), except on the
    `untracked` disks, which have no bitmap and are served in full."""
    full = set(untracked)
    root = ET.Element("domainbackup", mode="pull")
    if since is not None:
        ET.SubElement(root, "incremental").text = since
    ET.SubElement(root, "server", transport="unix", socket=socket)
    disks = ET.SubElement(root, "disks")
    for target in all_targets:
        if target in scratch:
            disk = ET.SubElement(disks, "disk", name=target, backup="yes", type="file")
            if since is not None and target in full:
                disk.set("backupmode", "full")
            ET.SubElement(disk, "scratch", file=scratch[target])
        else:
            ET.SubElement(disks, "disk", name=target, backup="no")
    return ET.tostring(root, encoding="unicode")


def checkpoint_xml(name: str, targets: Iterable[str], all_targets: Iterable[str]) -> str:
    """A checkpoint tracking the changes of the disks `targets` from the job's instant."""
    wanted = set(targets)
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "description").text = "virtbackup: changes since the backup of this name"
    disks = ET.SubElement(root, "disks")
    for target in all_targets:
        ET.SubElement(disks, "disk", name=target, checkpoint="bitmap" if target in wanted else "no")
    return ET.tostring(root, encoding="unicode")


def redefined_checkpoint_xml(
    name: str, targets: Iterable[str], all_targets: Iterable[str], created: int
) -> str:
    """libvirt's metadata of a checkpoint whose bitmap (named as the checkpoint) was
    added to the images of `targets` by hand, at `created` (seconds since the epoch)."""
    root = ET.fromstring(checkpoint_xml(name, targets, all_targets))
    ET.SubElement(root, "creationTime").text = str(created)
    for disk in root.iter("disk"):
        if disk.get("checkpoint") == "bitmap":
            disk.set("bitmap", name)
    return ET.tostring(root, encoding="unicode")


def job_socket(job_xml: str) -> str | None:
    """The unix socket a running backup job serves on (None: not a unix pull job)."""
    try:
        server = ET.fromstring(job_xml).find("server")
    except ET.ParseError:
        return None
    if server is None or server.get("transport") != "unix":
        return None
    return server.get("socket")
