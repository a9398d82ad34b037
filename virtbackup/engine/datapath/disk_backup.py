"""Back up a set of disks of one domain into the store (no libvirt here: the caller has
discovered the disks and made them safe to read, e.g. shut off or snapshotted)."""

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from virtbackup import __version__
from virtbackup.adapters import age, ssh_sign
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.core import backup_names
from virtbackup.core.backup_errors import DiskBackupFailed
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.manifest import (
    LAYOUT_REPOSITORY,
    LAYOUT_STREAM,
    DiskRecord,
    LeftOutDisk,
    Manifest,
    Sealed,
    StoredFile,
    build_manifest,
    build_sealed,
)
from virtbackup.core.progress import ProgressSink
from virtbackup.core.repository_format import (
    ChunkNames,
    RepositoryConfig,
    chunk_key,
    index_file_name,
    recipients_id,
)
from virtbackup.core.signature import signature_name
from virtbackup.core.sizes import human_size
from virtbackup.core.streamformat import STREAM_FORMAT_VERSION
from virtbackup.core.xml_secrets import SecretsError, without_secrets
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.chunk_writer import ChunkResult, RepositoryBackup, Unchanged
from virtbackup.engine.datapath.nbd_source import NbdLocation, NbdSource
from virtbackup.engine.datapath.stream_writer import StreamResult, write_stream
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_backups import index_chunks
from virtbackup.engine.stores.repository_secret import writer_secret
from virtbackup.engine.stores.store import DOMAIN_XML, MANIFEST, BackupFiles, Partial, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EarlierDisk:
    """The same disk in the backup whose checkpoint the changes are counted from."""

    label: str  # domain/stamp
    files: BackupFiles
    record: DiskRecord


@dataclass(frozen=True)
class DiskSource:
    target: str  # vda
    path: Path  # image file or block device to read
    format: str  # raw, qcow2, ...
    virtual_size: int  # bytes the guest sees; 0 when unknown
    backing_chain: tuple[str, ...] = ()  # images below `path`, top first (not in its bytes)
    origin: Path | None = None  # the disk's image when `path` is a copy of it (--skip-free)
    free_space_skipped: bool = False  # `path` holds the guest's used blocks only
    nbd: NbdLocation | None = None  # served by a backup job: read there, not at `path`
    since: EarlierDisk | None = None  # nbd incremental: its chunks reused where unchanged
    location: str | None = None  # a network disk's source (URL, no credentials): no path


@dataclass(frozen=True)
class BackupResult:
    path: Path | str  # the complete backup directory (a remote location with --remote-only)
    manifest: Manifest
    notes: tuple[str, ...] = ()  # what the summary should warn about


def readable(disk: DiskSource) -> Path | NbdSource:
    """What the data path reads for a disk: its image, or the export serving it."""
    return disk.path if disk.nbd is None else NbdSource(disk.nbd)


def stream_file_name(disk: DiskSource, encrypted: bool = False) -> str:
    return backup_names.stream_file_name(disk.target, disk.format, encrypted)


def back_up_disks(
    store: Store,
    domain_name: str,
    domain_uuid: str,
    domain_xml: str,
    method: str,
    disks: Sequence[DiskSource],
    progress: ProgressSink,
    options: WriterOptions | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    encrypt_to: age.Recipients | None = None,
    sign_with: Path | None = None,
    left_out: Sequence[LeftOutDisk] = (),
    layout: str = LAYOUT_STREAM,
    state_dir: Path | None = None,
    checkpoint: str | None = None,
) -> BackupResult:
    """Write one complete backup or nothing: on any failure the partial directory is
    removed and DiskBackupFailed names the domain and disk (exit status 1). With
    `encrypt_to` every file is age-encrypted as it is written (see core/manifest.py);
    with `sign_with` (an OpenSSH private key) its metadata files are signed (see
    core/signature.py). `left_out` names the domain's disks that are not in it,
    recorded in the manifest. `layout` says how the disks are stored: as stream files
    (LAYOUT_STREAM) or as chunks in DEST's repository and an index per disk
    (LAYOUT_REPOSITORY, see core/repository_format.py; made on first use). An encrypted
    repository backup keeps the repository secret in `state_dir` (see
    engine/stores/repository_secret.py). `checkpoint`: the checkpoint of the disks'
    instant, recorded in the manifest."""
    options = options or WriterOptions()
    started = clock()
    notes: list[str] = []
    _check_targets(domain_name, disks)
    with (
        _repository_writer(store, layout, options, encrypt_to, state_dir, notes) as repository,
        store.begin(domain_name, started) as partial,
    ):
        records = []
        for disk in disks:
            try:
                if repository is None:
                    record = _stream_disk(partial, domain_name, disk, progress, options, encrypt_to)
                else:
                    record = _repository_disk(
                        partial, domain_name, disk, progress, repository, notes
                    )
            except VirtbackupError as err:
                raise DiskBackupFailed(
                    f"backup of {domain_name} failed at disk {disk.target}: {err.message}",
                    err.hint,
                ) from err
            records.append(record)
        if repository is not None:
            _confirm_chunks(domain_name, repository)
        if encrypt_to is None:
            domain_xml, xml_notes = _cleartext_xml(domain_name, domain_xml)
            notes += xml_notes
        manifest = Manifest(
            tool_version=__version__,
            domain_name=domain_name,
            domain_uuid=domain_uuid,
            started=started,
            finished=clock(),
            method=method,
            disks=tuple(records),
            left_out=tuple(left_out),
            # binds the domain XML stored beside it (see core/manifest.py)
            domain_xml_sha256=hashlib.sha256(domain_xml.encode()).hexdigest(),
            checkpoint=checkpoint,
        )
        # The manifest is written last: a directory with a manifest is a complete one.
        metadata = _Metadata(partial, sign_with)
        if encrypt_to is None:
            metadata.write(DOMAIN_XML, domain_xml.encode())
            metadata.write(MANIFEST, build_manifest(manifest).encode())
        else:
            _write_sealed(metadata, manifest, domain_xml, encrypt_to)
        path = partial.commit()
    log.info("backup of %s complete: %s", domain_name, path)
    return BackupResult(path, manifest, tuple(notes))


def _stream_disk(
    partial: Partial,
    domain_name: str,
    disk: DiskSource,
    progress: ProgressSink,
    options: WriterOptions,
    encrypt_to: age.Recipients | None,
) -> DiskRecord:
    """One disk as a stream file of the backup."""
    name = stream_file_name(disk, encrypt_to is not None)
    where = disk.location or disk.path
    log.info("backing up %s %s (%s) to %s", domain_name, disk.target, where, name)
    with partial.create(name) as out, _sealing(out, encrypt_to) as sink:
        result = write_stream(readable(disk), sink, progress, disk.target, options)
    return _disk_record(disk, name, partial.size_of(name), options.chunk_size, result)


def _repository_disk(
    partial: Partial,
    domain_name: str,
    disk: DiskSource,
    progress: ProgressSink,
    repository: RepositoryBackup,
    notes: list[str],
) -> DiskRecord:
    """One disk as chunks in the repository and its index in the backup; a disk served
    with its changes since an earlier backup reuses that backup's chunks where unchanged
    (a note says why when it cannot)."""
    name = index_file_name(disk.target, disk.format)
    where = disk.location or disk.path
    log.info("backing up %s %s (%s) to the repository, %s", domain_name, disk.target, where, name)
    chunk_size = repository.options.chunk_size
    earlier = _earlier_names(disk, chunk_size, notes)
    source = readable(disk)
    try:
        unchanged = _unchanged(disk, source, earlier, chunk_size, notes)
    except BaseException:
        if isinstance(source, NbdSource):
            source.close()
        raise
    with partial.create(name) as out:
        result = repository.write_disk(source, out, progress, disk.target, unchanged)
    log.info(
        "%s %s: %d bytes read, %d chunks new (%d bytes), %d already stored",
        domain_name,
        disk.target,
        result.bytes_read,
        result.chunks_new,
        result.bytes_added,
        result.chunks_reused,
    )
    stored = result.index_size + result.bytes_added
    record = _disk_record(disk, name, stored, chunk_size, result)
    return replace(record, layout=LAYOUT_REPOSITORY, index_sha256=result.index_sha256)


def _earlier_names(disk: DiskSource, chunk_size: int, notes: list[str]) -> list[str] | None:
    """The chunk names of the disk in the earlier backup, whole and checked; None (and
    a note) when its index cannot be used."""
    since = disk.since
    if since is None:
        return None
    try:
        return [name for name, _length in index_chunks(since.files, since.record, chunk_size)]
    except VirtbackupError as err:
        notes.append(f"{disk.target}: read in full: the index of {since.label} is unusable ({err})")
        return None


def _unchanged(
    disk: DiskSource,
    source: Path | NbdSource,
    earlier: list[str] | None,
    chunk_size: int,
    notes: list[str],
) -> Unchanged | None:
    if earlier is None or disk.since is None or not isinstance(source, NbdSource):
        return None
    if disk.since.record.byte_size != source.size:
        notes.append(
            f"{disk.target}: read in full: it has {source.size} bytes, "
            f"{disk.since.record.byte_size} in {disk.since.label} (resized)"
        )
        return None
    return Unchanged(earlier, source.unchanged_chunks(chunk_size))


def _disk_record(
    disk: DiskSource,
    name: str,
    stored_size: int,
    chunk_size: int,
    result: StreamResult | ChunkResult,
) -> DiskRecord:
    return DiskRecord(
        target=disk.target,
        source=disk.location or str(disk.origin or disk.path),
        format=disk.format,
        virtual_size=disk.virtual_size,
        byte_size=result.data_size,
        stored_size=stored_size,
        file=name,
        stream_format_version=STREAM_FORMAT_VERSION,
        chunk_size=chunk_size,
        digest_algorithm=result.digest_name,
        digest=result.digest,
        free_space_skipped=disk.free_space_skipped,
    )


@contextmanager
def _repository_writer(
    store: Store,
    layout: str,
    options: WriterOptions,
    encrypt_to: age.Recipients | None,
    state_dir: Path | None,
    notes: list[str],
) -> Iterator[RepositoryBackup | None]:
    """For the repository layout, the repository of DEST (made on first use, with the
    chunk size asked for) with this backup registered as its writer for as long as the
    block runs, which includes the commit (see engine/stores/chunk_store.py); None for
    streams. An existing repository keeps its chunk size (a note says so when another
    was asked for). An encrypted backup writes to the encrypted chunks, named with the
    repository secret."""
    if layout == LAYOUT_STREAM:
        yield None
        return
    if layout != LAYOUT_REPOSITORY:
        raise DiskBackupFailed(f"unknown backup layout {layout!r}")
    if not isinstance(store, LocalStore):
        raise DiskBackupFailed("the repository layout cannot be written to a remote yet")
    chunks = ChunkStore(store.dest, sealed=encrypt_to is not None)
    asked = options.repository_chunk_size
    config = chunks.create(RepositoryConfig(chunk_size=asked or options.chunk_size))
    if asked is not None and asked != config.chunk_size:
        notes.append(_chunk_size_note(chunks, asked, config.chunk_size))
    options = replace(options, chunk_size=config.chunk_size)
    if encrypt_to is None:
        with chunks.writer():
            yield RepositoryBackup(chunks, options)
        return
    chunks.ensure_chunk_dir()
    secret = writer_secret(chunks, resolve_state_dir(state_dir), encrypt_to)
    with chunks.writer():
        names = ChunkNames(chunk_key(secret, recipients_id(encrypt_to.fingerprints())))
        yield RepositoryBackup(chunks, options, names, encrypt_to.file)


def _chunk_size_note(chunks: ChunkStore, asked: int, kept: int) -> str:
    return (
        f"repository_chunk_size {human_size(asked)} applies to new repositories only: "
        f"{chunks.root} keeps its chunks of {human_size(kept)}"
    )


def _confirm_chunks(domain_name: str, repository: RepositoryBackup) -> None:
    """The last touch of every chunk before commit (see RepositoryBackup.confirm_all)."""
    try:
        repository.confirm_all()
    except VirtbackupError as err:
        raise DiskBackupFailed(f"backup of {domain_name} failed: {err.message}") from err


def _cleartext_xml(domain_name: str, domain_xml: str) -> tuple[str, tuple[str, ...]]:
    """The domain XML an unencrypted backup stores: without its secrets (see
    core/xml_secrets.py), and a note naming what was left out."""
    try:
        stripped, removed = without_secrets(domain_xml)
    except SecretsError as err:
        raise DiskBackupFailed(f"the XML of {domain_name} cannot be stored: {err}") from None
    if not removed:
        return domain_xml, ()
    note = (
        f"domain.xml: {', '.join(removed)} left out (the backup is not encrypted); "
        "a domain restored with --define has none"
    )
    return stripped, (note,)


def _sealing(
    out: IO[bytes], encrypt_to: age.Recipients | None
) -> AbstractContextManager[IO[bytes]]:
    """Where a stream is written: the file itself, or a pipe through `age` into it."""
    return nullcontext(out) if encrypt_to is None else age.encrypting(encrypt_to.file, out)


class _Metadata:
    """Writes the metadata files of a backup, each with its signature first when the
    backup is signed (so the manifest, the last file, is still written last)."""

    def __init__(self, partial: Partial, sign_with: Path | None) -> None:
        self.partial = partial
        self.sign_with = sign_with

    def write(self, name: str, data: bytes) -> None:
        if self.sign_with is not None:
            signature = ssh_sign.sign(self.sign_with, data)
            self.partial.write_bytes(signature_name(name), signature)
        if name == MANIFEST:
            self.partial.write_text(name, data.decode())
        else:
            self.partial.write_bytes(name, data)


def _write_sealed(
    metadata: _Metadata, manifest: Manifest, domain_xml: str, encrypt_to: age.Recipients
) -> None:
    """The encrypted domain XML and manifest, then the public manifest beside them."""
    partial = metadata.partial
    sealed_files = [
        (f"{DOMAIN_XML}{age.AGE_SUFFIX}", domain_xml),
        (f"{MANIFEST}{age.AGE_SUFFIX}", build_manifest(manifest)),
    ]
    for name, text in sealed_files:
        metadata.write(name, age.encrypt_bytes(encrypt_to.file, text.encode()))
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
    metadata.write(MANIFEST, build_sealed(public).encode())


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
