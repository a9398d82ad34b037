"""Verify the whole repository of a DEST: every chunk (or a random sample) read once,
however many backups use it, and every repository backup's indexes checked.

Two passes keep memory bounded by the damage found, not by the repository's size:
1. each stored chunk is read, decoded and hashed; a chunk whose sha256 is not its name
   (damaged, or another chunk's bytes under this name) is remembered;
2. each repository backup's indexes are read (they exist and are the ones their
   manifests record) and each chunk they name is looked up: a missing chunk or one
   remembered as damaged collects the backups that use it.
Each problem is then one line naming the chunk and every backup that uses it.
"""

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from virtbackup.core.backup_errors import CorruptBackup, StoreError
from virtbackup.core.progress import ProgressSink
from virtbackup.core.repository_format import chunk_path
from virtbackup.core.streamformat import max_stored_length
from virtbackup.engine.datapath.frames import FrameError, decode_chunk
from virtbackup.engine.datapath.stream_reader import map_bounded
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_backups import (
    IndexedBackup,
    chunk_file_size,
    holds_index,
    index_chunks,
    indexed_backup,
)

ALL_CHUNKS = 100.0


@dataclass(frozen=True)
class RepositoryCheck:
    chunks: int  # stored chunks
    chunks_read: int  # of them read and decoded (all, or the sample)
    backups: int  # repository backups whose indexes were checked
    problems: tuple[str, ...]  # one line each

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_repository(
    dest: Path,
    progress: ProgressSink,
    sample_percent: float = ALL_CHUNKS,
    rng: random.Random | None = None,
    workers: int = 0,
) -> RepositoryCheck:
    """Check the repository of `dest` (see the module docstring); StoreError when `dest`
    holds none, CorruptBackup when its description cannot be read."""
    chunk_store = ChunkStore(dest)
    if not chunk_store.exists():
        raise StoreError(
            f"{dest} holds no repository",
            "give the --dest that repository backups were written to",
        )
    chunk_size = chunk_store.config.chunk_size
    rng = rng or random.Random()
    chunks = _check_chunks(chunk_store, progress, sample_percent, rng, workers)
    damaged = chunks.damaged
    problems: list[str] = []
    users: dict[str, list[str]] = defaultdict(list)  # damaged or missing chunk -> backups
    missing: set[str] = set()
    store = LocalStore(dest)
    backups = 0
    for info in store.list_backups():
        backup = indexed_backup(store, info)
        if backup is None:
            if info.manifest is None and holds_index(Path(info.path)):  # cannot be checked
                problems.append(f"{info.domain}/{info.stamp}: {info.problem}")
            continue
        backups += 1
        try:
            _check_indexes(chunk_store, backup, chunk_size, damaged, missing, users)
        except CorruptBackup as err:
            problems.append(f"{backup.label}: {err}")
    for name, why in damaged.items():
        problems.append(f"chunk {chunk_path(name)} {why}; {_used_by(users.get(name, []))}")
    for name in sorted(missing):
        problems.append(f"chunk {chunk_path(name)} is missing; {_used_by(users[name])}")
    return RepositoryCheck(chunks.stored, chunks.read, backups, tuple(problems))


@dataclass(frozen=True)
class _ChunksRead:
    stored: int
    read: int
    damaged: dict[str, str]  # chunk name -> why


def _check_chunks(
    chunk_store: ChunkStore,
    progress: ProgressSink,
    sample_percent: float,
    rng: random.Random,
    workers: int,
) -> _ChunksRead:
    """Read every chunk, or a random sample of them; the damaged ones, with why. The
    chunks are listed twice (first to size the progress) rather than kept."""
    chunk_size = chunk_store.config.chunk_size
    limit = max_stored_length(chunk_size)
    stored = stored_bytes = 0
    for _name, status in chunk_store.names():
        stored += 1
        stored_bytes += status.st_size
    chosen = (
        (name, status.st_size)
        for name, status in chunk_store.names()
        if sample_percent >= ALL_CHUNKS or rng.random() * ALL_CHUNKS < sample_percent
    )

    def check(item: tuple[str, int]) -> tuple[str, int, str | None]:
        name, size = item
        return name, size, _chunk_problem(chunk_store, name, chunk_size, limit)

    damaged: dict[str, str] = {}
    read = 0
    progress.on_start(int(stored_bytes * min(sample_percent, ALL_CHUNKS) / ALL_CHUNKS), "chunks")
    try:
        for name, size, problem in map_bounded(check, chosen, workers):
            read += 1
            if problem is not None:
                damaged[name] = problem
            progress.on_advance(size)
    finally:
        progress.on_done()
    return _ChunksRead(stored, read, damaged)


def _chunk_problem(chunk_store: ChunkStore, name: str, chunk_size: int, limit: int) -> str | None:
    """Why the stored chunk `name` is not the chunk of that name, or None."""
    try:
        frame = chunk_store.read(name, limit)
    except CorruptBackup as err:
        return f"cannot be read ({err})"
    try:
        data = decode_chunk(frame, chunk_size)
    except FrameError as err:
        return f"is damaged ({err})"
    if hashlib.sha256(data).hexdigest() != name:
        return "is damaged: its data does not match its name"
    return None


def _check_indexes(
    chunk_store: ChunkStore,
    backup: IndexedBackup,
    chunk_size: int,
    damaged: dict[str, str],
    missing: set[str],
    users: dict[str, list[str]],
) -> None:
    """Look up every chunk the backup's indexes name; note the backup as a user of each
    that is damaged or missing, once its indexes have proved to be its own (a replaced
    index is one problem, not one per chunk it names)."""
    bad: set[str] = set()  # damaged or missing chunks this backup uses
    for disk in backup.indexed_disks:
        for name, _length in index_chunks(backup.files, disk, chunk_size):
            if name in damaged or name in missing or name in bad:
                bad.add(name)
            elif chunk_file_size(chunk_store, name) is None:
                bad.add(name)
    for name in bad:
        if name not in damaged:
            missing.add(name)
        users[name].append(backup.label)


def _used_by(labels: list[str]) -> str:
    if not labels:
        return "used by no backup (remove it: a new backup would reuse it)"
    return f"used by {', '.join(sorted(labels))}"
