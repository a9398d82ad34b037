"""The backup a backup-API run reads the changes since: the newest backup of the domain
in DEST, if it can be trusted as the base of the changes its checkpoint tracks.

Only the newest backup is a base: the changes libvirt reports are those since one
checkpoint, and the newest backup's checkpoint is the one that makes the least to read.
Any doubt means a full read, with the reason for the summary.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from virtbackup.core.manifest import DiskRecord, Manifest
from virtbackup.core.model import DiskFacts
from virtbackup.engine.datapath.disk_backup import EarlierDisk
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import BackupFiles

# libvirt's creation times and the manifest's are whole seconds of one host's clock
CLOCK_SLACK = 2


@dataclass(frozen=True)
class ChangeBase:
    """The newest backup of the domain and the checkpoint of its instant."""

    label: str  # domain/stamp, for messages
    files: BackupFiles
    manifest: Manifest
    checkpoint: str

    def disk(self, target: str) -> DiskRecord | None:
        return next((d for d in self.manifest.disks if d.target == target), None)


def newest_base(store: LocalStore, domain_name: str, domain_uuid: str) -> ChangeBase | str | None:
    """The base of the next backup of the domain, or why there is none; None for the
    domain's first backup in DEST, which reads everything as any first backup does and
    has nothing to warn about."""
    backups = store.list_backups(domain_name)
    if not backups:
        return None
    newest = backups[0]
    label = f"{newest.domain}/{newest.stamp}"
    manifest = newest.manifest
    if not isinstance(manifest, Manifest):
        return f"the newest backup {label} cannot be read ({newest.problem or 'encrypted'})"
    if manifest.domain_uuid != domain_uuid:
        return f"the newest backup {label} is of another domain of that name"
    if manifest.checkpoint is None:
        return f"the newest backup {label} was made without a checkpoint ({manifest.method})"
    if newest.verified is not None and not newest.verified.ok:
        return f"the newest backup {label} failed verification"
    files = store.files(newest.domain, newest.stamp)
    return ChangeBase(label, files, manifest, manifest.checkpoint)


def changes_since(
    base: ChangeBase | str | None, disks: Sequence[DiskFacts], checkpoints: Mapping[str, int]
) -> tuple[str | None, dict[str, EarlierDisk], list[str]]:
    """The checkpoint to ask the changes since (None: read everything), the disks whose
    earlier backup they are counted from, and why any disk is read in full.
    `checkpoints`: the domain's, with their creation times. The base's checkpoint is
    trusted only when it was made while its backup ran: one of that name made later
    (ours deleted, another made under its name) tracks the changes since then only."""
    if base is None:
        return None, {}, []
    if isinstance(base, str):
        return None, {}, [f"read in full: {base}"]
    created = checkpoints.get(base.checkpoint)
    if created is None:
        return None, {}, [f"read in full: checkpoint {base.checkpoint} of {base.label} is gone"]
    started, finished = base.manifest.started.timestamp(), base.manifest.finished.timestamp()
    if not started - CLOCK_SLACK <= created <= finished + CLOCK_SLACK:
        return (
            None,
            {},
            [
                f"read in full: checkpoint {base.checkpoint} was made at "
                f"{datetime.fromtimestamp(created, UTC):%Y-%m-%dT%H:%M:%SZ}, not during the "
                f"backup {base.label}: another of that name replaced it"
            ],
        )
    earlier: dict[str, EarlierDisk] = {}
    notes = []
    for disk in disks:
        record = base.disk(disk.target)
        if record is None or not record.in_repository:
            notes.append(f"{disk.target}: read in full: not in the repository in {base.label}")
        elif record.source != disk.location:
            notes.append(
                f"{disk.target}: read in full: it is {disk.location} now, {record.source} "
                f"in {base.label}"
            )
        elif disk.virtual_size is not None and record.byte_size != disk.virtual_size:
            notes.append(
                f"{disk.target}: read in full: resized from {record.byte_size} to "
                f"{disk.virtual_size} bytes since {base.label}"
            )
        else:
            earlier[disk.target] = EarlierDisk(base.label, base.files, record)
    return (base.checkpoint if earlier else None), earlier, notes
