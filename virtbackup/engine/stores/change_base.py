"""The backup a backup-API run reads the changes since: the newest backup of the domain
in DEST, if it can be trusted as the base of the changes its checkpoint tracks.

Only the newest backup is a base: the changes libvirt reports are those since one
checkpoint, and the newest backup's checkpoint is the one that makes the least to read.
Any doubt means a full read, with the reason for the summary.

An encrypted backup keeps its checkpoint and disk records in the sealed manifest, which
a backup run cannot open (it holds the recipients, not the identity). The host keeps
its own copy instead: after each encrypted backup-API backup, the cleartext manifest is
written to the state directory (`change-bases/`, root only), tied to DEST and the
backup's stamp. Why there and not in the public manifest: the checkpoint only means
something on the host whose libvirt made it, the state directory is as trusted as the
host (it already holds the repository secret), and nothing in DEST, which may have
come back from anywhere, then steers which changes are trusted. The next run uses the
copy only when the newest backup in DEST has that very stamp, and the index it reuses
is read through the copy's `index_sha256`, so a replaced index or a forged public
manifest makes at worst a full read. A host that lost its state directory, or a newer
backup made elsewhere, reads in full too.
"""

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from virtbackup.adapters.atomic_file import write_atomically
from virtbackup.adapters.journal import ensure_state_subdir, open_private_file
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.json_fields import field, load_object
from virtbackup.core.manifest import DiskRecord, Manifest, Sealed, build_manifest, parse_manifest
from virtbackup.core.model import DiskFacts, Method
from virtbackup.engine.datapath.disk_backup import EarlierDisk
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import BackupFiles, BackupInfo

SEALED_BASES_DIR = "change-bases"
_MAX_RECORD_BYTES = 1 << 20  # a manifest of a few disks

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


def newest_base(
    store: LocalStore, domain_name: str, domain_uuid: str, state_dir: Path
) -> ChangeBase | str | None:
    """The base of the next backup of the domain, or why there is none; None for the
    domain's first backup in DEST, which reads everything as any first backup does and
    has nothing to warn about."""
    backups = store.list_backups(domain_name)
    if not backups:
        return None
    newest = backups[0]
    label = f"{newest.domain}/{newest.stamp}"
    manifest = newest.manifest
    if isinstance(manifest, Sealed):
        found = _host_copy(state_dir, store, newest, manifest, domain_uuid)
        if isinstance(found, str):
            return f"the newest backup {label} is encrypted and {found}"
        manifest = found
    if not isinstance(manifest, Manifest):
        return f"the newest backup {label} cannot be read ({newest.problem or 'damaged'})"
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


def keep_sealed_base(state_dir: Path, store: LocalStore, backup: Path, manifest: Manifest) -> None:
    """Keep the host's copy of an encrypted backup's manifest (see the module
    docstring); OSError or StateDirError when the state directory cannot take it."""
    folder = ensure_state_subdir(state_dir / SEALED_BASES_DIR)
    record = {"dest": str(store.dest), "stamp": backup.name, "manifest": build_manifest(manifest)}
    write_atomically(
        folder / _record_name(store, manifest.domain_uuid), json.dumps(record).encode()
    )


def _host_copy(
    state_dir: Path, store: LocalStore, newest: BackupInfo, public: Sealed, domain_uuid: str
) -> Manifest | str:
    """The host's copy of the sealed manifest of `newest`, or why there is none."""
    if public.method != Method.BACKUP_API.value:
        return f"was made without a checkpoint ({public.method})"
    try:
        record = load_object(
            _read_private(state_dir / SEALED_BASES_DIR / _record_name(store, domain_uuid))
        )
        manifest = parse_manifest(field(record, "manifest", str))
        same = (
            field(record, "dest", str) == str(store.dest)
            and field(record, "stamp", str) == newest.stamp
            and manifest.domain_name == newest.domain
        )
    except (OSError, ValueError, VirtbackupError):
        same = False  # missing or unreadable: a full read
    return manifest if same else "this host keeps no record of its checkpoint"


def _read_private(path: Path) -> str:
    fd = open_private_file(path, os.O_RDONLY)
    with open(fd, "rb") as source:
        return source.read(_MAX_RECORD_BYTES).decode()


def _dest_key(store: LocalStore) -> str:
    return hashlib.sha256(str(store.dest).encode()).hexdigest()[:16]


def _record_name(store: LocalStore, domain_uuid: str) -> str:
    """One record per DEST and domain: the newest encrypted backup of it."""
    return f"{_dest_key(store)}-{domain_uuid}.json"
