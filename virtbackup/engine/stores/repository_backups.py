"""The backups of a DEST that keep disks in its repository, and the chunks their indexes
name: read front to back in bounded memory (a 1 TiB disk has a 17 MiB index) and checked
as untrusted input against the manifest (size, `index_sha256`, the grid of the repository).
"""

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.manifest import DiskRecord, Manifest
from virtbackup.core.repository_format import (
    LINE_SIZE,
    RepositoryFormatError,
    chunk_lengths,
    index_size,
    is_index_file_name,
    parse_index_block,
)
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import BackupFiles, BackupInfo

_LINES_PER_READ = 4096


@dataclass(frozen=True)
class IndexedBackup:
    """A complete backup with at least one disk in the repository."""

    domain: str
    stamp: str
    files: BackupFiles
    manifest: Manifest

    @property
    def label(self) -> str:
        return f"{self.domain}/{self.stamp}"

    @property
    def indexed_disks(self) -> tuple[DiskRecord, ...]:
        return tuple(disk for disk in self.manifest.disks if disk.in_repository)


def indexed_backup(store: LocalStore, backup: BackupInfo) -> IndexedBackup | None:
    """The listed backup as one of the repository, or None: a stream backup, or one
    whose manifest cannot be read (encrypted, damaged: its listing says why)."""
    manifest = backup.manifest
    if not isinstance(manifest, Manifest) or not any(d.in_repository for d in manifest.disks):
        return None
    return IndexedBackup(
        backup.domain, backup.stamp, store.files(backup.domain, backup.stamp), manifest
    )


def holds_index(path: Path) -> bool:
    """Whether a backup directory holds an index (a backup of the repository, whatever
    its manifest says); True when it cannot be told."""
    try:
        return any(is_index_file_name(name) for name in os.listdir(path))
    except OSError:
        return True


def index_chunks(
    files: BackupFiles, disk: DiskRecord, chunk_size: int
) -> Iterator[tuple[str, int]]:
    """(name, uncompressed length) of every chunk of the disk's index, in disk order.
    CorruptBackup when the index is missing, is not the one the manifest records or does
    not fit the repository; the digest is known only at the end, so a consumer sees the
    chunks of a replaced index before the error (and must not act on them until then)."""
    where = f"{files.label}/{disk.file}"
    if disk.chunk_size != chunk_size:
        raise CorruptBackup(
            f"{where}: its disk is cut into chunks of {disk.chunk_size} bytes, the "
            f"repository's are {chunk_size}"
        )
    expected = index_size(disk.byte_size, chunk_size)
    size = files.size(disk.file)
    if size is None:
        raise CorruptBackup(f"{where}: the index is missing")
    if size != expected:
        raise CorruptBackup(
            f"{where}: the index has {size} bytes; a disk of {disk.byte_size} bytes "
            f"needs {expected}"
        )
    grid = chunk_lengths(disk.byte_size, chunk_size)
    for name in _index_names(files, disk.file, expected, disk.index_sha256):
        yield name, next(grid)[1]


def sealed_index_names(files: BackupFiles, name: str) -> Iterator[str]:
    """The chunk names of an index of an encrypted backup, read without its key: the
    manifest that binds it (size, `index_sha256`) is encrypted, so the index is only
    checked to be whole lines of chunk paths."""
    size = files.size(name)
    if size is None:
        raise CorruptBackup(f"{files.label}/{name}: the index is missing")
    if size % LINE_SIZE:
        raise CorruptBackup(f"{files.label}/{name}: the index has {size} bytes, not whole lines")
    yield from _index_names(files, name, size, None)


def _index_names(
    files: BackupFiles, name: str, expected: int, index_sha256: str | None
) -> Iterator[str]:
    """The names of the index file `name` of `expected` bytes, a block at a time,
    checked against `index_sha256` at the end when it is known."""
    where = f"{files.label}/{name}"
    digest = hashlib.sha256()
    number = 0
    with files.stream(name) as index:
        while block := index.read(min(_LINES_PER_READ * LINE_SIZE, expected - number * LINE_SIZE)):
            if len(block) % LINE_SIZE:
                block += index.read(LINE_SIZE - len(block) % LINE_SIZE)
            digest.update(block)
            try:
                names = parse_index_block(block, number)
            except RepositoryFormatError as err:
                raise CorruptBackup(f"{where}: {err}") from None
            yield from names
            number += len(names)
        if number * LINE_SIZE != expected or index.read(1):
            raise CorruptBackup(f"{where}: the index changed size while it was read")
    if index_sha256 is not None and digest.hexdigest() != index_sha256:
        raise CorruptBackup(f"{where}: the index is not the one its manifest records")


def chunk_file_size(chunk_store: ChunkStore, name: str) -> int | None:
    """Bytes of the stored chunk `name`; None when there is no such regular file."""
    try:
        status = os.lstat(chunk_store.path(name))
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None
