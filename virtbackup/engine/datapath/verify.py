"""Re-read a backup and check every digest: per frame, whole disk, index, manifest."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from virtbackup import __version__
from virtbackup.core.backup_errors import CorruptBackup, RemoteError, StoreError
from virtbackup.core.manifest import DiskRecord
from virtbackup.core.progress import ProgressSink
from virtbackup.core.signature import BadSignature, SignatureCheck, SignatureState
from virtbackup.core.verify_record import VerifyRecord
from virtbackup.engine.datapath.repository_reader import verify_repository_disk
from virtbackup.engine.datapath.stream_reader import check_index_matches, read_index, verify_stream
from virtbackup.engine.datapath.stream_sequential import verify_sequential
from virtbackup.engine.stores.backup_access import NO_SIGNERS, OpenedBackup, Trust, open_backup
from virtbackup.engine.stores.local import LocalFiles
from virtbackup.engine.stores.store import BackupFiles


@dataclass(frozen=True)
class VerifyOutcome:
    backup: str  # where the backup is (a directory or a remote location)
    ok: bool
    problem: str | None  # one line naming the disk and offset
    recorded: bool  # whether verified.json could be written
    signature: SignatureCheck = SignatureCheck(SignatureState.UNSIGNED)


def verify_backup(
    backup: Path | BackupFiles,
    progress: ProgressSink,
    workers: int = 0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    identity: Path | None = None,
    trust: Trust = NO_SIGNERS,
) -> VerifyOutcome:
    """Verify one backup and record the result in it (verified.json). A missing
    backup or unreadable manifest raises (nothing to record); a damaged disk stream or
    a bad signature is an outcome. An encrypted backup needs `identity` to be verified;
    an unsigned one where `trust` expects signatures raises UnsignedBackup."""
    files = LocalFiles(backup) if isinstance(backup, Path) else backup
    problem = None
    try:
        opened = open_backup(files, identity, trust)
    except BadSignature as err:
        problem = str(err)
        signature = SignatureCheck(SignatureState.BAD, problem=err.message)
    else:
        signature = opened.signature
        try:
            if opened.manifest.domain_xml_sha256 is not None:
                opened.domain_xml()  # checks it is the one the manifest records
            for disk in opened.manifest.disks:
                _verify_disk(opened, disk, progress, workers)
        except CorruptBackup as err:
            problem = str(err)
    record = VerifyRecord(clock(), problem is None, problem, __version__)
    try:
        files.record_verification(record)
        recorded = True
    except (StoreError, RemoteError):
        recorded = False  # e.g. backups on a read-only mount: the check still counts
    return VerifyOutcome(files.label, problem is None, problem, recorded, signature)


def _verify_disk(
    opened: OpenedBackup, disk: DiskRecord, progress: ProgressSink, workers: int
) -> None:
    if disk.in_repository:
        verify_repository_disk(opened, disk, progress, workers)
        return
    path = opened.random_access(disk)
    index = read_index(path, disk.target) if path is not None else None
    stored_size = opened.files.size(disk.file)
    if stored_size is None:
        raise CorruptBackup(f"{disk.target}: stream file {disk.file} is missing")
    if stored_size != disk.stored_size:
        raise CorruptBackup(
            f"{disk.target}: {disk.file} has {stored_size} bytes, the manifest says "
            f"{disk.stored_size} (truncated or appended to)"
        )
    if index is None:
        with opened.disk_stream(disk) as stream:
            digest = verify_sequential(stream, disk, disk.target, progress, workers)
    else:
        check_index_matches(index, disk)
        digest = verify_stream(index, disk.target, progress, workers)
    if digest != disk.digest:
        raise CorruptBackup(
            f"{disk.target}: the data's {disk.digest_algorithm} is {digest}, "
            f"the manifest records {disk.digest}"
        )
