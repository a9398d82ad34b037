"""What the backups of a DEST hold and what removing one would free, and the summary of
its repository (chunks, stored bytes, logical bytes, dedup ratio).

Removing a backup frees its own files and the chunks no other backup references. One
pass over the indexes finds those: each chunk referenced is mapped to the one backup
using it, or to "shared" once a second backup names it (a dict of 32-byte digests: about
30 MiB per TiB of distinct data). A backup whose references cannot be read (a damaged
index, an unreadable manifest beside an index) could share any chunk: then no repository
backup's figure is given, and the problem says why.
"""

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from virtbackup.core.backup_errors import CorruptBackup, StoreError
from virtbackup.core.manifest import Manifest
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_backups import (
    IndexedBackup,
    chunk_file_size,
    holds_index,
    index_chunks,
    indexed_backup,
)
from virtbackup.engine.stores.store import BackupInfo

_SHARED = -1


@dataclass(frozen=True)
class BackupUsage:
    logical_size: int | None  # bytes of its disks (what restore writes); None: unknown
    frees: int | None  # bytes removing it would free; None: cannot be told


@dataclass(frozen=True)
class RepositorySummary:
    chunks: int
    stored_bytes: int  # bytes of the chunk files
    logical_bytes: int  # bytes of all repository backups' disks
    backups: int  # backups with disks in the repository

    @property
    def dedup_ratio(self) -> float | None:
        """Logical bytes per stored byte; None for an empty repository."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


@dataclass(frozen=True)
class Usage:
    backups: dict[tuple[str, str], BackupUsage]  # (domain, stamp) -> usage
    summary: RepositorySummary | None  # None: DEST holds no repository
    problems: tuple[str, ...]


def usage_of(store: LocalStore, backups: list[BackupInfo]) -> Usage:
    """The usage of `backups`, which must be every backup of the store's DEST (a chunk
    shared with an unlisted backup would count as freed)."""
    chunk_store = ChunkStore(store.dest)
    indexed: list[tuple[BackupInfo, IndexedBackup]] = []
    problems: list[str] = []
    for info in backups:
        backup = indexed_backup(store, info)
        if backup is not None:
            indexed.append((info, backup))
        elif info.manifest is None and holds_index(Path(info.path)):
            problems.append(f"{info.domain}/{info.stamp}: {info.problem}")
    unique: dict[int, int] = {}
    if chunk_store.exists():
        unique = _unique_chunk_bytes(chunk_store, [backup for _info, backup in indexed], problems)
    usage = {(info.domain, info.stamp): plain_usage(info) for info in backups}
    for number, (info, _backup) in enumerate(indexed):
        frees = None if problems else info.size + unique.get(number, 0)
        key = (info.domain, info.stamp)
        usage[key] = BackupUsage(usage[key].logical_size, frees)
    summary = _summary(chunk_store, indexed) if chunk_store.exists() else None
    return Usage(usage, summary, tuple(problems))


def plain_usage(info: BackupInfo) -> BackupUsage:
    """A backup whose files are all it holds (a stream backup, or any on a remote, which
    has no repository): removing it frees them."""
    if isinstance(info.manifest, Manifest):
        return BackupUsage(sum(disk.byte_size for disk in info.manifest.disks), info.size)
    return BackupUsage(None, info.size)


def _unique_chunk_bytes(
    chunk_store: ChunkStore, backups: list[IndexedBackup], problems: list[str]
) -> dict[int, int]:
    """Backup number -> bytes of the chunks only it references."""
    try:
        chunk_size = chunk_store.config.chunk_size
    except (CorruptBackup, StoreError) as err:  # a later version's, or damaged
        problems.append(str(err))
        return {}
    owner: dict[bytes, int] = {}
    for number, backup in enumerate(backups):
        try:
            for disk in backup.indexed_disks:
                for name, _length in index_chunks(backup.files, disk, chunk_size):
                    key = bytes.fromhex(name)
                    if owner.setdefault(key, number) != number:
                        owner[key] = _SHARED
        except CorruptBackup as err:
            problems.append(f"{backup.label}: {err}")
    unique: dict[int, int] = defaultdict(int)
    for key, number in owner.items():
        if number != _SHARED:
            unique[number] += chunk_file_size(chunk_store, key.hex()) or 0  # missing: verify says
    return unique


def _summary(
    chunk_store: ChunkStore, indexed: list[tuple[BackupInfo, IndexedBackup]]
) -> RepositorySummary:
    chunks = stored = 0
    for _name, status in chunk_store.names():
        chunks += 1
        stored += status.st_size
    logical = sum(disk.byte_size for _info, backup in indexed for disk in backup.indexed_disks)
    return RepositorySummary(chunks, stored, logical, len(indexed))
