"""Garbage collection of the repository: remove the chunks no backup references.

Writers (engine/stores/chunk_store.Writer) and garbage collection share DEST with other
processes and hosts and agree through the filesystem alone; all times are its times.

1. T0 = the filesystem's now. Live writers = registrations whose heartbeat is younger
   than `stale_after`. cutoff = min(T0, the oldest live writer's start) - grace.
2. Mark: every chunk of every index of every complete backup of DEST gets its mtime set
   to now (>= T0). An index or manifest that cannot be read stops here, before anything
   is removed: a damaged backup must not make its chunks look unused.
3. Sweep: a chunk whose mtime is older than the cutoff is renamed to a hidden name
   (`.gc-<name>`); after a pause it is looked at again: touched meanwhile, it is renamed
   back, else unlinked. Temporary files older than the cutoff go too.

Why a chunk some backup needs survives:
- a backup complete when gc lists the backups: step 2 touched its chunks after T0, so
  they are not older than the cutoff when step 3 looks;
- a backup being written: its writer registered before it touched or wrote a chunk, so
  every chunk it uses has an mtime at or after its start. Registered before T0 and alive,
  its start is at or after the cutoff; registered after T0, its touches are after T0.
  Either way step 3 leaves them, unless the stat came before the writer's touch: then
  the touch lands either before the rename (the renamed file keeps that mtime, the second
  look sees it and renames it back) or after it (the touch finds no chunk and the writer
  writes it again). Before its commit the writer touches every chunk once more, so it
  never commits a backup with a chunk missing;
- a gc stopped by a signal or an error between rename and second look renames its
  hidden chunks back; one killed (kill -9, power loss) leaves hidden names, and the next
  gc renames them back (or drops them when the chunk was written again) before it marks,
  as if the rename had not happened. Until then a backup that uses such a chunk does not
  restore: run gc again. (VIRTBACKUP_TEST_GC_PAUSE, a test hook and no setting, holds gc
  after a batch is renamed so that tests can kill it there.)
The grace covers a writer whose registration gc sees late (a filesystem that shows
another host's new file after a delay) and clocks read from different servers.

Only one gc runs per repository on a host (gc.lock, flock'ed). Two on different hosts
are still safe: each marks from the same complete backups before it sweeps, so neither
renames a chunk the other needs; a hidden name one of them made may be renamed back by
the other starting meanwhile, which only keeps a chunk a little longer; and whichever
second look or unlink finds its hidden name gone leaves it be.

A backup that is not complete (a partial directory) protects its chunks only while its
writer lives: the chunks of a killed backup go once its registration is stale
(`stale_after`) or removed by `clean` (remove_dead_writers).

The plain chunks (chunks/) and those of encrypted backups (sealed-chunks/) are collected
alike, each from the indexes of its own backups: an encrypted backup's index names its
chunks by keyed names, which gc reads without any key (its manifest is encrypted, its
public manifest lists the index files).

Memory stays bounded by one index block and one sweep batch; a dry run keeps the set of
referenced names instead of touching (it changes nothing).
"""

import errno
import fcntl
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from virtbackup.core.backup_errors import CorruptBackup, StoreError, write_error
from virtbackup.core.config import DEFAULT_GC_GRACE
from virtbackup.core.errors import LockHeld
from virtbackup.core.manifest import DiskRecord, Sealed
from virtbackup.core.repository_format import (
    GC_HIDDEN_PREFIX,
    GC_LOCK_FILE,
    is_chunk_name,
    is_index_file_name,
)
from virtbackup.engine.stores.chunk_store import (
    HEARTBEAT_SECONDS,
    SETTLE_SECONDS,
    ChunkStore,
)
from virtbackup.engine.stores.local import LocalFiles, LocalStore
from virtbackup.engine.stores.repository_backups import (
    holds_index,
    index_chunks,
    sealed_index_names,
)

STALE_WRITER_SECONDS = 10 * HEARTBEAT_SECONDS  # ten missed heartbeats: the writer is gone
SWEEP_BATCH = 65536  # chunks renamed before one pause: bounded memory, few pauses
# Test hook: seconds to wait after a batch is renamed, before the settle pause, so that a
# test can kill gc while chunks are hidden. Not a setting.
PAUSE_AFTER_RENAME_ENV = "VIRTBACKUP_TEST_GC_PAUSE"
MISSING_LIMIT = 1000  # referenced-but-missing chunks named in a result; more are counted

log = logging.getLogger(__name__)

Backup = tuple[str, str]  # (domain, stamp)


class GcRunning(LockHeld):
    """Another gc of this host holds the repository's lock (exit 3, as for any lock)."""


class ReferencesUnreadable(CorruptBackup):
    """A backup's manifest or index cannot be read: gc cannot tell its chunks from garbage."""


@dataclass(frozen=True)
class GcSettings:
    grace: float = DEFAULT_GC_GRACE
    stale_after: float = STALE_WRITER_SECONDS
    settle: float = SETTLE_SECONDS
    dry_run: bool = False
    # backups to count as gone (a dry run of prune: what remains after it)
    assume_removed: frozenset[Backup] = frozenset()


@dataclass(frozen=True)
class MissingChunk:
    backup: str  # domain/stamp
    chunk: str


@dataclass
class GcResult:
    dry_run: bool
    backups: int = 0  # backups whose chunks were marked
    removed: int = 0  # chunks removed (in a dry run: that would be)
    removed_bytes: int = 0
    kept: int = 0  # chunks that stay
    kept_bytes: int = 0
    temporaries: int = 0  # unfinished chunk files of dead writers removed
    restored: int = 0  # hidden chunks of an interrupted gc put back
    live_writers: int = 0
    missing: list[MissingChunk] = field(default_factory=list)  # the first MISSING_LIMIT
    missing_count: int = 0

    def note_missing(self, backup: str, chunk: str) -> None:
        self.missing_count += 1
        if len(self.missing) < MISSING_LIMIT:
            self.missing.append(MissingChunk(backup, chunk))


@dataclass(frozen=True)
class IndexRef:
    """One disk's index of one complete backup: of a plain one (`disk` known), or of an
    encrypted one (the index `file`, its chunks in sealed-chunks/)."""

    backup: str  # domain/stamp, for messages
    files: LocalFiles
    disk: DiskRecord | None
    file: str

    @property
    def sealed(self) -> bool:
        return self.disk is None


def has_repository(dest: Path) -> bool:
    return ChunkStore(dest).exists()


def collect_garbage(
    dest: Path,
    settings: GcSettings = GcSettings(),
    *,
    chunks: ChunkStore | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> GcResult:
    """Remove the chunks of DEST's repository that no backup references (module
    docstring); `chunks` and `sleep` are seams for fault injection."""
    chunks = chunks or ChunkStore(dest)
    if not chunks.exists():
        raise StoreError(f"{dest} holds no repository", "nothing to collect")
    config = chunks.config  # a repository this version cannot read is left alone
    log.debug("gc of %s (chunks of %d bytes)", chunks.root, config.chunk_size)
    sealed = ChunkStore(dest, sealed=True)
    with _gc_lock(chunks):
        result = GcResult(settings.dry_run)
        if not settings.dry_run:
            result.restored = _restore_hidden(chunks) + _restore_hidden(sealed)
        start = chunks.filesystem_now()
        writers = chunks.live_writers(start, settings.stale_after)
        result.live_writers = len(writers)
        cutoff = min([start, *(writer.started for writer in writers)]) - settings.grace
        indexes = _indexes(LocalStore(dest), settings.assume_removed, result)
        for store in (chunks, sealed):
            ours = [index for index in indexes if index.sealed == store.sealed]
            _collect(store, ours, cutoff, settings, sleep, result)
    return result


def _collect(
    chunks: ChunkStore,
    indexes: list[IndexRef],
    cutoff: float,
    settings: GcSettings,
    sleep: Callable[[float], None],
    result: GcResult,
) -> None:
    """Mark and sweep one chunk directory."""
    referenced: set[str] | None = set() if settings.dry_run else None
    for index in indexes:
        _mark(chunks, index, referenced, result)
    if referenced is None:
        _sweep(chunks, cutoff, settings.settle, sleep, result)
    else:
        _count_sweep(chunks, cutoff, referenced, result)
    _remove_temporaries(chunks, cutoff, settings.dry_run, result)


def remove_dead_writers(dest: Path, *, dry_run: bool = False) -> list[str]:
    """Registrations of this host's writers whose process is gone (killed backups):
    without them gc need not wait until they are stale. Names are <host>-<pid>-<random>."""
    chunks = ChunkStore(dest)
    writers = chunks.writers
    host = socket.gethostname()
    dead = []
    for name in chunks.registrations():
        owner, pid = (name.rsplit("-", 2) + ["", ""])[:2]
        if owner != host or not pid.isdigit() or _process_lives(int(pid)):
            continue
        dead.append(name)
        if not dry_run:
            try:
                os.unlink(writers / name)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise write_error(err, writers / name) from None
    return dead


def _process_lives(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


@contextmanager
def _gc_lock(chunks: ChunkStore) -> Iterator[None]:
    fd = chunks.open_lock_file(GC_LOCK_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GcRunning(
                f"another gc is running on {chunks.root}", "wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _indexes(
    store: LocalStore, assume_removed: Collection[Backup], result: GcResult
) -> list[IndexRef]:
    """Every repository index of every complete backup; ReferencesUnreadable for a
    backup whose manifest cannot be read, unless it holds no index (a stream backup)."""
    found = []
    for backup in store.list_backups():
        if (backup.domain, backup.stamp) in assume_removed:
            continue
        label = f"{backup.domain}/{backup.stamp}"
        files = store.files(backup.domain, backup.stamp)
        if isinstance(backup.manifest, Sealed):
            names = [f.file for f in backup.manifest.files if is_index_file_name(f.file)]
            found += [IndexRef(label, files, None, name) for name in names]
            result.backups += bool(names)
            continue
        if backup.manifest is None:
            if holds_index(files.path):
                raise _unreadable(label, str(backup.problem))
            continue  # no index, no chunk of ours
        disks = [disk for disk in backup.manifest.disks if disk.in_repository]
        found += [IndexRef(label, files, disk, disk.file) for disk in disks]
        result.backups += bool(disks)
    return found


def _unreadable(backup: str, why: str) -> ReferencesUnreadable:
    return ReferencesUnreadable(
        f"gc stopped before removing anything: backup {backup} cannot be read ({why})",
        "its chunks cannot be told from garbage; verify it, then repair or remove it",
    )


def _mark(
    chunks: ChunkStore, index: IndexRef, referenced: set[str] | None, result: GcResult
) -> None:
    """Touch every chunk of the index (or, in a dry run, add it to `referenced`). A
    backup removed meanwhile (by a prune on another host) needs none of its chunks."""
    try:
        for name in _index_names(index, chunks.config.chunk_size):
            if referenced is not None:
                referenced.add(name)
                # hidden by a killed gc: this gc would put it back first
                present = any(map(_is_file, (chunks.path(name), chunks.hidden_path(name))))
            else:
                present = chunks.touch(name)
            if not present:
                result.note_missing(index.backup, name)
    except ReferencesUnreadable:
        if os.path.lexists(index.files.path):
            raise
        log.info("backup %s was removed while gc ran: its chunks are not marked", index.backup)


def _is_file(path: Path) -> bool:
    """Whether `path` is a regular file: what `ChunkStore.touch` counts as a chunk."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):  # chunks/ab/ is not a directory
        return False


def _index_names(index: IndexRef, chunk_size: int) -> Iterator[str]:
    """The chunk names of the index, read a block at a time and checked against the
    manifest; ReferencesUnreadable when it is not the one it names. A replaced index is
    told only at its end: marking its chunks first keeps more, never less."""
    try:
        if index.disk is None:
            yield from sealed_index_names(index.files, index.file)
        else:
            for name, _length in index_chunks(index.files, index.disk, chunk_size):
                yield name
    except (CorruptBackup, OSError) as err:
        raise _unreadable(index.backup, str(err)) from None


def _sweep(
    chunks: ChunkStore,
    cutoff: float,
    settle: float,
    sleep: Callable[[float], None],
    result: GcResult,
) -> None:
    batch: list[tuple[str, int]] = []
    try:
        for name, status in chunks.names():
            if status.st_mtime >= cutoff:
                result.kept += 1
                result.kept_bytes += status.st_size
                continue
            try:
                os.rename(chunks.path(name), chunks.hidden_path(name))
            except FileNotFoundError:
                continue  # another gc took it
            except OSError as err:
                raise write_error(err, chunks.path(name)) from None
            batch.append((name, status.st_size))
            if len(batch) >= SWEEP_BATCH:
                _settle_and_decide(chunks, batch, cutoff, settle, sleep, result)
                batch = []
        if batch:
            _settle_and_decide(chunks, batch, cutoff, settle, sleep, result)
    except BaseException:  # SIGTERM, Ctrl-C, an error: leave no chunk hidden
        _put_back(chunks, batch)
        raise


def _put_back(chunks: ChunkStore, batch: list[tuple[str, int]]) -> None:
    """Rename the hidden chunks of an unfinished batch back (those decided on are gone)."""
    for name, _ in batch:
        try:
            os.rename(chunks.hidden_path(name), chunks.path(name))
        except OSError as err:
            if err.errno != errno.ENOENT:
                log.warning("cannot put back %s: %s (the next gc does)", name, err.strerror)


def _settle_and_decide(
    chunks: ChunkStore,
    batch: list[tuple[str, int]],
    cutoff: float,
    settle: float,
    sleep: Callable[[float], None],
    result: GcResult,
) -> None:
    """After the pause, a hidden chunk touched since its stat goes back; the rest go."""
    pause = os.environ.get(PAUSE_AFTER_RENAME_ENV)
    if pause:
        sleep(float(pause))
    sleep(settle)
    for name, size in batch:
        hidden = chunks.hidden_path(name)
        try:
            touched = os.lstat(hidden).st_mtime >= cutoff
            if touched:
                os.rename(hidden, chunks.path(name))  # a rewritten copy holds the same bytes
            else:
                os.unlink(hidden)
        except FileNotFoundError:
            continue  # put back or removed by a gc on another host
        except OSError as err:
            raise write_error(err, hidden) from None
        if touched:
            result.kept += 1
            result.kept_bytes += size
        else:
            result.removed += 1
            result.removed_bytes += size


def _count_sweep(chunks: ChunkStore, cutoff: float, referenced: set[str], result: GcResult) -> None:
    """What `_sweep` would remove after a mark: unreferenced and older than the cutoff."""
    for name, status in chunks.names():
        if name in referenced or status.st_mtime >= cutoff:
            result.kept += 1
            result.kept_bytes += status.st_size
        else:
            result.removed += 1
            result.removed_bytes += status.st_size


def _remove_temporaries(chunks: ChunkStore, cutoff: float, dry_run: bool, result: GcResult) -> None:
    for path, status in chunks.temporary_files():
        if status.st_mtime >= cutoff or not stat.S_ISREG(status.st_mode):
            continue
        if not dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise write_error(err, path) from None
        result.temporaries += 1


def _restore_hidden(chunks: ChunkStore) -> int:
    """Put back the chunks a killed gc hid (dropped when the chunk was written again)."""
    restored = 0
    for directory in chunks.prefix_dirs():
        for entry in os.listdir(directory):
            name = entry.removeprefix(GC_HIDDEN_PREFIX)
            if name == entry or not is_chunk_name(name) or not name.startswith(directory.name):
                continue
            hidden, final = directory / entry, directory / name
            try:
                if os.path.lexists(final) or not stat.S_ISREG(os.lstat(hidden).st_mode):
                    os.unlink(hidden)  # written again meanwhile, or not a chunk of ours
                else:
                    os.rename(hidden, final)
                    restored += 1
            except OSError as err:
                if err.errno != errno.ENOENT:  # another gc of another host was quicker
                    raise write_error(err, hidden) from None
    return restored


def collect_after_retention(
    dest: Path, settings: GcSettings, pruned: Collection[Backup] = ()
) -> GcResult | None:
    """The gc that follows retention (`prune`, `all`); None when DEST holds no
    repository. A dry run counts the backups retention would remove (`pruned`) as gone,
    so that what it says would be freed includes the chunks only they use."""
    if not has_repository(dest):
        return None
    if settings.dry_run:
        settings = replace(settings, assume_removed=frozenset(pruned))
    return collect_garbage(dest, settings)
