"""Back up a set of disks of one domain into the store (no libvirt here: the caller has
discovered the disks and made them safe to read, e.g. shut off or snapshotted)."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from virtbackup import __version__
from virtbackup.adapters.store import DOMAIN_XML, MANIFEST, BackupStore
from virtbackup.core.backup_errors import DiskBackupFailed
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.manifest import DiskRecord, Manifest, build_manifest
from virtbackup.core.progress import ProgressSink
from virtbackup.core.streamformat import STREAM_FORMAT_VERSION
from virtbackup.engine.stream_writer import WriterOptions, write_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskSource:
    target: str  # vda
    path: Path  # image file or block device to read
    format: str  # raw, qcow2, ...
    virtual_size: int  # bytes the guest sees
    origin: Path | None = None  # the disk's image when `path` is a copy of it (--skip-free)
    free_space_skipped: bool = False  # `path` holds the guest's used blocks only


@dataclass(frozen=True)
class BackupResult:
    path: Path  # the complete backup directory
    manifest: Manifest


def stream_file_name(disk: DiskSource) -> str:
    return f"{disk.target}.{disk.format}.lz4"


def back_up_disks(
    store: BackupStore,
    domain_name: str,
    domain_uuid: str,
    domain_xml: str,
    method: str,
    disks: Sequence[DiskSource],
    progress: ProgressSink,
    options: WriterOptions | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupResult:
    """Write one complete backup or nothing: on any failure the partial directory is
    removed and DiskBackupFailed names the domain and disk (exit status 1)."""
    options = options or WriterOptions()
    started = clock()
    _check_targets(domain_name, disks)
    with store.begin(domain_name, started) as partial:
        records = []
        for disk in disks:
            name = stream_file_name(disk)
            log.info("backing up %s %s (%s) to %s", domain_name, disk.target, disk.path, name)
            try:
                with partial.create(name) as out:
                    result = write_stream(disk.path, out, progress, disk.target, options)
            except VirtbackupError as err:
                raise DiskBackupFailed(
                    f"backup of {domain_name} failed at disk {disk.target}: {err.message}",
                    err.hint,
                ) from err
            records.append(
                DiskRecord(
                    target=disk.target,
                    source=str(disk.origin or disk.path),
                    format=disk.format,
                    virtual_size=disk.virtual_size,
                    byte_size=result.data_size,
                    stored_size=result.stored_size,
                    file=name,
                    stream_format_version=STREAM_FORMAT_VERSION,
                    chunk_size=options.chunk_size,
                    digest_algorithm=result.digest_name,
                    digest=result.digest,
                    free_space_skipped=disk.free_space_skipped,
                )
            )
        partial.write_text(DOMAIN_XML, domain_xml)
        manifest = Manifest(
            tool_version=__version__,
            domain_name=domain_name,
            domain_uuid=domain_uuid,
            started=started,
            finished=clock(),
            method=method,
            disks=tuple(records),
        )
        # The manifest is written last: a directory with a manifest is a complete one.
        partial.write_text(MANIFEST, build_manifest(manifest))
        path = partial.commit()
    log.info("backup of %s complete: %s", domain_name, path)
    return BackupResult(path, manifest)


def _check_targets(domain_name: str, disks: Sequence[DiskSource]) -> None:
    targets = [disk.target for disk in disks]
    if not disks:
        raise DiskBackupFailed(f"domain {domain_name} has no disk to back up")
    if len(set(targets)) != len(targets):
        raise DiskBackupFailed(f"domain {domain_name} lists a disk target twice: {targets}")
    for disk in disks:
        if "/" in disk.target or "/" in disk.format or disk.target.startswith("."):
            raise DiskBackupFailed(f"disk target {disk.target!r} cannot name a file")
