"""What the backups of a DEST hold and what removing one would free, and the summary of
its repository (chunks, stored bytes, logical bytes, dedup ratio).

Removing a backup frees its own files and the chunks no other backup references. One
pass over the indexes finds those: each chunk referenced is mapped to the one backup
using it, or to "shared" once a second backup names it (a dict of 32-byte digests: about
30 MiB per TiB of distinct data). A backup whose references cannot be read (a damaged
index, an unreadable manifest beside an index) could share any chunk: then no repository
backup's figure is given, and the problem says why.

Encrypted backups count without a key as far as their public manifests and indexes
tell: what removing one frees (its files and the encrypted chunks only it names), and
their chunks apart in the summary; their logical size is inside the encrypted manifest,
so it is unknown here and the dedup ratio is that of the unencrypted chunks.
"""

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from virtbackup.core.backup_errors import CorruptBackup, StoreError
from virtbackup.core.manifest import Manifest, Sealed
from virtbackup.core.repository_format import is_index_file_name
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_backups import (
    IndexedBackup,
    chunk_file_size,
    holds_index,
    index_chunks,
    indexed_backup,
    sealed_index_names,
)
from virtbackup.engine.stores.store import BackupFiles, BackupInfo

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
    # the same of the encrypted backups (their logical bytes are encrypted)
    encrypted_chunks: int = 0
    encrypted_bytes: int = 0
    encrypted_backups: int = 0

    @property
    def dedup_ratio(self) -> float | None:
        """Logical bytes per stored byte; None for an empty repository."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


@dataclass(frozen=True)
class Usage:
    backups: dict[tuple[str, str], BackupUsage]  # (domain, stamp) -> usage
    summary: RepositorySummary | None  # None: DEST holds no repository
    problems: tuple[str, ...]


@dataclass(frozen=True)
class _Referrer:
    """A backup whose indexes name chunks of one chunk directory."""

    info: BackupInfo
    chunk_store: ChunkStore
    names: Callable[[], Iterator[str]]  # the chunk names of all its indexes

    @property
    def label(self) -> str:
        return f"{self.info.domain}/{self.info.stamp}"


def usage_of(store: LocalStore, backups: list[BackupInfo]) -> Usage:
    """The usage of `backups`, which must be every backup of the store's DEST (a chunk
    shared with an unlisted backup would count as freed)."""
    chunk_store = ChunkStore(store.dest)
    sealed_store = ChunkStore(store.dest, sealed=True)
    indexed: list[IndexedBackup] = []
    referrers: list[_Referrer] = []
    problems: list[str] = []
    for info in backups:
        backup = indexed_backup(store, info)
        if backup is not None:
            indexed.append(backup)
            referrers.append(
                _Referrer(info, chunk_store, partial(_plain_names, chunk_store, backup))
            )
        elif isinstance(info.manifest, Sealed):
            names = [f.file for f in info.manifest.files if is_index_file_name(f.file)]
            if names:
                files = store.files(info.domain, info.stamp)
                referrers.append(
                    _Referrer(info, sealed_store, partial(_sealed_names, files, names))
                )
        elif info.manifest is None and holds_index(Path(info.path)):
            problems.append(f"{info.domain}/{info.stamp}: {info.problem}")
    unique: dict[int, int] = {}
    if chunk_store.exists():
        try:
            chunk_store.config  # noqa: B018 (read once: every index is cut on its grid)
        except (CorruptBackup, StoreError) as err:  # a later version's, or damaged
            problems.append(str(err))
        else:
            unique = _unique_chunk_bytes(referrers, problems)
    usage = {(info.domain, info.stamp): plain_usage(info) for info in backups}
    for number, referrer in enumerate(referrers):
        info = referrer.info
        frees = None if problems else info.size + unique.get(number, 0)
        key = (info.domain, info.stamp)
        usage[key] = BackupUsage(usage[key].logical_size, frees)
    return Usage(usage, repository_summary(store, backups), tuple(problems))


def repository_summary(store: LocalStore, backups: list[BackupInfo]) -> RepositorySummary | None:
    """The repository of the store's DEST in figures, from the manifests of `backups` (every
    backup of DEST) and the chunk files, no index read; None when DEST has no repository."""
    chunk_store = ChunkStore(store.dest)
    if not chunk_store.exists():
        return None
    indexed = [backup for info in backups if (backup := indexed_backup(store, info))]
    encrypted = sum(
        any(is_index_file_name(f.file) for f in info.manifest.files)
        for info in backups
        if isinstance(info.manifest, Sealed)
    )
    return _summary(chunk_store, ChunkStore(store.dest, sealed=True), indexed, encrypted)


def _plain_names(chunk_store: ChunkStore, backup: IndexedBackup) -> Iterator[str]:
    chunk_size = chunk_store.config.chunk_size
    for disk in backup.indexed_disks:
        for name, _length in index_chunks(backup.files, disk, chunk_size):
            yield name


def _sealed_names(files: BackupFiles, names: list[str]) -> Iterator[str]:
    for name in names:
        yield from sealed_index_names(files, name)


def plain_usage(info: BackupInfo) -> BackupUsage:
    """A backup whose files are all it holds (a stream backup, or any on a remote, which
    has no repository): removing it frees them."""
    if isinstance(info.manifest, Manifest):
        return BackupUsage(sum(disk.byte_size for disk in info.manifest.disks), info.size)
    return BackupUsage(None, info.size)


def _unique_chunk_bytes(referrers: list[_Referrer], problems: list[str]) -> dict[int, int]:
    """Backup number -> bytes of the chunks only it references."""
    owner: dict[tuple[bool, bytes], int] = {}
    for number, referrer in enumerate(referrers):
        sealed = referrer.chunk_store.sealed
        try:
            for name in referrer.names():
                key = (sealed, bytes.fromhex(name))
                if owner.setdefault(key, number) != number:
                    owner[key] = _SHARED
        except CorruptBackup as err:
            problems.append(f"{referrer.label}: {err}")
    unique: dict[int, int] = defaultdict(int)
    for (_sealed, digest), number in owner.items():
        if number != _SHARED:
            chunk_store = referrers[number].chunk_store
            unique[number] += (
                chunk_file_size(chunk_store, digest.hex()) or 0
            )  # missing: verify says
    return unique


def _summary(
    chunk_store: ChunkStore, sealed_store: ChunkStore, indexed: list[IndexedBackup], encrypted: int
) -> RepositorySummary:
    chunks, stored = _stored(chunk_store)
    encrypted_chunks, encrypted_bytes = _stored(sealed_store)
    logical = sum(disk.byte_size for backup in indexed for disk in backup.indexed_disks)
    return RepositorySummary(
        chunks, stored, logical, len(indexed), encrypted_chunks, encrypted_bytes, encrypted
    )


def _stored(chunk_store: ChunkStore) -> tuple[int, int]:
    """The chunks of a chunk directory and their bytes."""
    chunks = stored = 0
    for _name, status in chunk_store.names():
        chunks += 1
        stored += status.st_size
    return chunks, stored
