"""Re-read a backup and check every digest: per frame, whole disk, index, manifest."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from virtbackup import __version__
from virtbackup.adapters.store import load_manifest, record_verification
from virtbackup.core.backup_errors import CorruptBackup, StoreError
from virtbackup.core.manifest import DiskRecord, VerifyRecord
from virtbackup.core.progress import ProgressSink
from virtbackup.engine.stream_reader import check_index_matches, read_index, verify_stream


@dataclass(frozen=True)
class VerifyOutcome:
    backup: Path
    ok: bool
    problem: str | None  # one line naming the disk and offset
    recorded: bool  # whether verified.json could be written


def verify_backup(
    backup: Path,
    progress: ProgressSink,
    workers: int = 0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> VerifyOutcome:
    """Verify one backup and record the result in it. A missing backup or unreadable
    manifest raises (nothing to record); a damaged disk stream is an outcome."""
    manifest = load_manifest(backup)
    problem = None
    try:
        for disk in manifest.disks:
            _verify_disk(backup, disk, progress, workers)
    except CorruptBackup as err:
        problem = str(err)
    record = VerifyRecord(clock(), problem is None, problem, __version__)
    try:
        record_verification(backup, record)
        recorded = True
    except StoreError:
        recorded = False  # e.g. backups on a read-only mount: the check still counts
    return VerifyOutcome(backup, problem is None, problem, recorded)


def _verify_disk(backup: Path, disk: DiskRecord, progress: ProgressSink, workers: int) -> None:
    path = backup / disk.file
    index = read_index(path, disk.target)
    stored_size = path.stat().st_size
    if stored_size != disk.stored_size:
        raise CorruptBackup(
            f"{disk.target}: {disk.file} has {stored_size} bytes, the manifest says "
            f"{disk.stored_size} (truncated or appended to)"
        )
    check_index_matches(index, disk)
    digest = verify_stream(index, disk.target, progress, workers)
    if digest != disk.digest:
        raise CorruptBackup(
            f"{disk.target}: the data's {disk.digest_algorithm} is {digest}, "
            f"the manifest records {disk.digest}"
        )
