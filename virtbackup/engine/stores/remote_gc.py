"""Garbage collection of the remote repository (`gc --remote`): remove the chunks on the
remote (engine/stores/remote_repository.py) that no remote backup names.

1. cutoff = this host's clock now - grace.
2. List every chunk of chunks/ and sealed-chunks/ with its time.
3. Mark: read every index of every backup directory of every host on the remote,
   complete or not. An index that cannot be read stops gc before anything is removed:
   a damaged backup must not make its chunks look unused.
4. Sweep: a chunk no index names and whose time is before the cutoff is removed.

Why a chunk some backup needs survives:
- a complete remote backup: its manifest goes up after its indexes, so step 3 reads
  its index whenever gc can see the backup at all;
- an upload of this host in progress: uploads hold this host's lock of the remote
  repository shared, gc holds it exclusively (adapters/locks.remote_repository_lock),
  so the two never overlap; an upload killed before its index went up protects
  nothing, and the next upload checks every chunk the cache vouches for, and sends
  again what gc took;
- an upload of another host sharing the remote: each chunk it sends takes the time of
  its upload (the local chunk is marked as used just before), so it stays while younger
  than the grace. It is safe when that host's whole upload, from its first chunk to its
  index, takes less than the grace and the two clocks differ by less than the rest.
Not covered yet: another host's upload that reuses a chunk older than the grace that
no index names any more, when gc reads the indexes before that upload's index is up.
Until backups of many hosts share one repository safely (in-progress markers per host,
a two-phase sweep), run remote gc where no other host is uploading.

Removing chunks changes what this host's cache of remote chunk names should hold: the
caches are dropped, and the next upload lists the remote again.
"""

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import rclone
from virtbackup.adapters.locks import remote_repository_lock
from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.repository_format import (
    CHUNK_PATH,
    CHUNKS_DIR,
    LINE_SIZE,
    REPOSITORY_DIR,
    SEALED_CHUNKS_DIR,
    RepositoryFormatError,
    chunk_path,
    is_index_file_name,
    parse_index_block,
)
from virtbackup.engine.stores.remote_repository import (
    CHUNK_CACHE_DIR,
    INDEX_LIMIT,
    RemoteChunkCache,
)

log = logging.getLogger(__name__)

DELETE_BATCH = 5000  # chunks per rclone delete


@dataclass(frozen=True)
class RemoteGcResult:
    chunks: int  # on the remote before the sweep
    named: int  # of them named by some index
    young: int  # not named, but younger than the grace
    removed: int
    removed_bytes: int
    dry_run: bool


def collect_remote_garbage(
    remote: rclone.Remote, state_dir: Path, grace: float, dry_run: bool = False
) -> RemoteGcResult:
    """Remove the unnamed chunks older than `grace` seconds (none with `dry_run`),
    holding this host's lock of the remote repository; LockHeld while it uploads."""
    with remote_repository_lock(state_dir, shared=False):
        cutoff = time.time() - grace
        stored = {
            f"{kind}/{path}": status
            for kind in (CHUNKS_DIR, SEALED_CHUNKS_DIR)
            for path, status in rclone.list_file_times(remote, f"{REPOSITORY_DIR}/{kind}").items()
            if CHUNK_PATH.fullmatch(path)
        }
        named = _named_chunks(remote)
        unnamed = [path for path in stored if path.split("/", 1)[1] not in named]
        doomed = sorted(path for path in unnamed if stored[path][1] < cutoff)
        if not dry_run and doomed:
            for kind in (CHUNKS_DIR, SEALED_CHUNKS_DIR):
                RemoteChunkCache(state_dir / CHUNK_CACHE_DIR, remote, kind).drop()
            for start in range(0, len(doomed), DELETE_BATCH):
                rclone.delete_listed(remote, REPOSITORY_DIR, doomed[start : start + DELETE_BATCH])
            log.info("removed %d unused chunks from the remote repository", len(doomed))
        return RemoteGcResult(
            chunks=len(stored),
            named=len(stored) - len(unnamed),
            young=len(unnamed) - len(doomed),
            removed=len(doomed),
            removed_bytes=sum(stored[path][0] for path in doomed),
            dry_run=dry_run,
        )


def _named_chunks(remote: rclone.Remote) -> set[str]:
    """The chunk paths ("ab/ab12...ef") named by the index of any backup directory
    <host>/<domain>/<stamp>/ on the remote, complete or not; CorruptBackup for an index
    that is not one (a name of both chunk directories counts for both: harmless)."""
    rules = [f"- /{REPOSITORY_DIR}/**", "+ /*/*/*/*.idx", "- **"]
    indexes = {
        path: size
        for path, size in rclone.list_file_sizes(remote, "", rules).items()
        if is_index_file_name(path.rsplit("/", 1)[-1])
    }
    for path, size in indexes.items():
        if size % LINE_SIZE or size > INDEX_LIMIT:
            raise CorruptBackup(f"{remote.path(path)} is not an index: it has {size} bytes")
    named: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="virtbackup-gc-") as scratch:
        rclone.fetch_listed(remote, "", Path(scratch), sorted(indexes))
        for path in indexes:
            data = (Path(scratch) / path).read_bytes()
            try:
                named.update(chunk_path(name) for name in parse_index_block(data, 0))
            except RepositoryFormatError as err:
                raise CorruptBackup(f"{remote.path(path)}: {err}") from None
    return named
