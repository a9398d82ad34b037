"""Back up a set of disks of one domain into the store (no libvirt here: the caller has
discovered the disks and made them safe to read, e.g. shut off or snapshotted)."""

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from virtbackup import __version__
from virtbackup.adapters import age
from virtbackup.adapters.store import DOMAIN_XML, MANIFEST
from virtbackup.core import backup_names
from virtbackup.core.backup_errors import DiskBackupFailed
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.manifest import (
    DiskRecord,
    Manifest,
    Sealed,
    StoredFile,
    build_manifest,
    build_sealed,
)
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
    path: Path | str  # the complete backup directory (a remote location with --remote-only)
    manifest: Manifest


def stream_file_name(disk: DiskSource, encrypted: bool = False) -> str:
    return backup_names.stream_file_name(disk.target, disk.format, encrypted)


class PartialSink(Protocol):
    """A backup being written: PartialBackup (local) or offsite.RemotePartial."""

    def __enter__(self) -> Any: ...

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None: ...

    def create(self, name: str) -> AbstractContextManager[IO[bytes]]: ...

    def write_text(self, name: str, text: str) -> None: ...

    def write_bytes(self, name: str, data: bytes) -> None: ...

    def size_of(self, name: str) -> int: ...

    def commit(self) -> Path | str: ...


class BackupTarget(Protocol):
    def begin(self, domain: str, now: datetime) -> PartialSink: ...


def back_up_disks(
    store: BackupTarget,
    domain_name: str,
    domain_uuid: str,
    domain_xml: str,
    method: str,
    disks: Sequence[DiskSource],
    progress: ProgressSink,
    options: WriterOptions | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    encrypt_to: age.Recipients | None = None,
) -> BackupResult:
    """Write one complete backup or nothing: on any failure the partial directory is
    removed and DiskBackupFailed names the domain and disk (exit status 1). With
    `encrypt_to` every file is age-encrypted as it is written (see core/manifest.py)."""
    options = options or WriterOptions()
    started = clock()
    _check_targets(domain_name, disks)
    with store.begin(domain_name, started) as partial:
        records = []
        for disk in disks:
            name = stream_file_name(disk, encrypt_to is not None)
            log.info("backing up %s %s (%s) to %s", domain_name, disk.target, disk.path, name)
            try:
                with partial.create(name) as out, _sealing(out, encrypt_to) as sink:
                    result = write_stream(disk.path, sink, progress, disk.target, options)
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
                    stored_size=partial.size_of(name),
                    file=name,
                    stream_format_version=STREAM_FORMAT_VERSION,
                    chunk_size=options.chunk_size,
                    digest_algorithm=result.digest_name,
                    digest=result.digest,
                    free_space_skipped=disk.free_space_skipped,
                )
            )
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
        if encrypt_to is None:
            partial.write_text(DOMAIN_XML, domain_xml)
            partial.write_text(MANIFEST, build_manifest(manifest))
        else:
            _write_sealed(partial, manifest, domain_xml, encrypt_to)
        path = partial.commit()
    log.info("backup of %s complete: %s", domain_name, path)
    return BackupResult(path, manifest)


def _sealing(
    out: IO[bytes], encrypt_to: age.Recipients | None
) -> AbstractContextManager[IO[bytes]]:
    """Where a stream is written: the file itself, or a pipe through `age` into it."""
    return nullcontext(out) if encrypt_to is None else age.encrypting(encrypt_to.file, out)


def _write_sealed(
    partial: PartialSink, manifest: Manifest, domain_xml: str, encrypt_to: age.Recipients
) -> None:
    """The encrypted domain XML and manifest, then the public manifest beside them."""
    sealed_files = [
        (f"{DOMAIN_XML}{age.AGE_SUFFIX}", domain_xml),
        (f"{MANIFEST}{age.AGE_SUFFIX}", build_manifest(manifest)),
    ]
    for name, text in sealed_files:
        partial.write_bytes(name, age.encrypt_bytes(encrypt_to.file, text.encode()))
    stored = [StoredFile(d.file, d.stored_size, d.target) for d in manifest.disks]
    stored += [StoredFile(name, partial.size_of(name)) for name, _text in sealed_files]
    public = Sealed(
        tool_version=manifest.tool_version,
        domain_name=manifest.domain_name,
        started=manifest.started,
        finished=manifest.finished,
        method=manifest.method,
        recipients=encrypt_to.fingerprints(),
        files=tuple(stored),
    )
    partial.write_text(MANIFEST, build_sealed(public))


def _check_targets(domain_name: str, disks: Sequence[DiskSource]) -> None:
    targets = [disk.target for disk in disks]
    if not disks:
        raise DiskBackupFailed(f"domain {domain_name} has no disk to back up")
    if len(set(targets)) != len(targets):
        raise DiskBackupFailed(f"domain {domain_name} lists a disk target twice: {targets}")
    for disk in disks:
        # what restore accepts from a manifest: a backup it would refuse is not written
        if not backup_names.is_disk_target(disk.target):
            raise DiskBackupFailed(f"disk target {disk.target!r} cannot name a file")
        if not backup_names.is_disk_format(disk.format):
            raise DiskBackupFailed(
                f"disk {disk.target} of {domain_name} has the unknown format {disk.format!r}"
            )
