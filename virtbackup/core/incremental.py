"""Whether a disk's backups read only what changed since the last one, and if not, what
would make them: a pure verdict for `list` and `doctor`.

Changes are tracked in qcow2 bitmaps (compat 1.1), which libvirt's checkpoints keep:
the backup API reads them from a running or paused domain, qemu-nbd from a shut-off
one (engine/methods/offline_changes); both only into the repository, whose chunks the
unchanged parts reuse. Raw images, block devices and LVM volumes have no bitmaps: they
are read in full, and the repository stores only their new chunks.
"""

from dataclasses import dataclass

from virtbackup.core.model import Method
from virtbackup.core.planning import DiskPlan, DomainPlan


@dataclass(frozen=True)
class Incremental:
    reads_changes: bool  # only the chunks written since the last backup are read
    why: str  # how, or why not
    fix: str | None = None  # what would give incremental reads


def incremental_reads(
    plan: DomainPlan, disk: DiskPlan, repository: bool, compat: str | None = None
) -> Incremental:
    """The verdict for one disk of the plan; `repository`: backups go into the
    repository layout; `compat`: the qcow2 image's version when known."""
    facts = disk.disk
    if not disk.backup:
        return Incremental(False, "not backed up")
    if facts.source_type != "file" or facts.format != "qcow2":
        what = "a block device" if facts.source_type == "block" else f"a {facts.format} image"
        on_lv = " on LVM" if facts.on_lv else ""
        return Incremental(
            False,
            f"{what}{on_lv} tracks no changes: read whole (the repository stores only new chunks)",
            f"make it a qcow2 file while shut off: qemu-img convert -O qcow2 -o compat=1.1 "
            f"{facts.path or 'IMAGE'} NEW.qcow2, then point the disk at NEW.qcow2",
        )
    if compat == "0.10":
        return Incremental(
            False,
            "qcow2 version 2 (compat 0.10) holds no bitmaps: read whole",
            f"while shut off: qemu-img amend -f qcow2 -o compat=1.1 {facts.path}",
        )
    if not repository:
        return Incremental(False, "stream backups read everything", "use --layout repository")
    if plan.method is Method.BACKUP_API:
        return Incremental(
            True,
            "changes since the last backup, from the image's bitmaps through libvirt's "
            "backup API (the first backup, and one after a doubt, reads everything)",
        )
    if plan.method is Method.OFFLINE:
        return Incremental(
            True,
            "changes since the last backup, from the image's bitmaps through qemu-nbd, "
            "once a backup of the running domain made a checkpoint (until then read whole)",
        )
    method = plan.method.value if plan.method else "none"
    return Incremental(
        False,
        f"the domain is backed up by {method}: read whole",
        "make every disk of the domain a qcow2 file for the backup API",
    )
