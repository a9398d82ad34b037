"""Garbage collection of the remote repository (`gc --remote`): remove the chunks on the
remote (engine/stores/remote_repository.py) that no remote backup names, while any host
may be uploading, with no lock service: object storage has neither locks nor an atomic
rename, so the scheme needs neither.

A run of gc on host H, holding H's own lock of the remote repository exclusively:
0. Settle what an earlier run of H left (it was killed): step 3 for each of its fossil
   directories. Only H's own: the lock says no other run of H is alive, while another
   host's run may still be between its steps 1 and 3.
1. Mark: list the chunks with their times; read every index of every backup directory
   of every host, complete or not. Candidates: the chunks no index names whose time is
   older than cutoff = now - grace. An index that cannot be read stops gc before
   anything moves.
2. Set aside: move the candidates into a fossil directory of this run,
   .virtbackup-repository/fossils/<H>/<run>/ (rclone move: each source is removed only
   once its copy is whole; a candidate already gone is skipped).
3. Sweep, once every move of step 2 has ended: read every index again; copy each fossil
   some index names back into the chunk directory, then remove the fossil directory.

The upload's side (RemoteRepository): it sends the chunks the remote lacks, then the
indexes, and only then checks that every chunk its indexes name is in the chunk
directory, sending again what is not; the manifest goes last.

Why no chunk that a backup names is ever lost. Say chunk C leaves the chunk directory
in step 2 of a run R (at time x) and an upload U names C in its index (visible from
time i), U's check of C happening at v > i. Step 3 of R reads the indexes at r > x.
- i < r: step 3 sees U's index, and copies C back.
- i > r: then v > i > r > x, so U's check finds C missing and sends it again.
In both cases C is in the chunk directory when U's manifest goes up, and the fossil
R removes was a copy. Chunks never change (a name is the hash of its bytes), so it does
not matter which host's copy of C is the one that stays. A chunk that comes back in
the chunk directory leaves it again only through another run, whose own step 3 reads
U's index. Runs of different hosts may overlap: each removes only its own fossils, and
the argument holds for each run alone. A killed run leaves its fossils, which the next
run of the same host settles (step 0): its step 2 has ended, as the run is dead.

What this needs of the remote: a listing or a read made after a write or a delete has
finished shows it (S3 has had read-after-write consistency since 2020; MinIO, Ceph RGW
in one site, SFTP and FTP servers give it too). It needs nothing of the clocks: the
grace (chunks younger than it are not candidates) only spares a host's upload in
progress the cost of sending its fresh chunks twice, and the chunk times are those of
the uploading hosts' clocks (rclone keeps the local file's time), so clocks that differ
by more than the grace cost transfers, never data.

What it does not cover: a restore that reads a backup just as a run set one of its
chunks aside (a backup finished between steps 1 and 2) finds that chunk missing until
step 3 puts it back: run it again. A host that dies for good between steps 2 and 3
leaves its fossil directory: remove it by hand once no upload of that time runs.

Removing chunks changes what this host's cache of remote chunk names should hold: the
caches are dropped, and the next upload lists the remote again.
"""

import logging
import os
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

FOSSILS_DIR = "fossils"  # in the remote repository: the chunks a gc run set aside
MOVE_BATCH = 5000  # chunks per rclone move
TRANSFERS = 16  # server-side moves in flight


@dataclass(frozen=True)
class RemoteGcResult:
    chunks: int  # on the remote before the sweep
    named: int  # of them named by some index
    young: int  # not named, but younger than the grace
    removed: int
    removed_bytes: int
    put_back: int  # set aside, but an index that went up meanwhile names them
    dry_run: bool


def collect_remote_garbage(
    remote: rclone.Remote, state_dir: Path, host: str, grace: float, dry_run: bool = False
) -> RemoteGcResult:
    """Remove the unnamed chunks older than `grace` seconds (none with `dry_run`),
    holding this host's lock of the remote repository; LockHeld while it uploads."""
    with remote_repository_lock(state_dir, shared=False):
        own_runs = f"{REPOSITORY_DIR}/{FOSSILS_DIR}/{host}"
        if not dry_run:
            for entry in rclone.list_entries(remote, own_runs):
                if entry.is_dir:
                    _sweep(remote, f"{own_runs}/{entry.path}")
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
        put_back: set[str] = set()
        if not dry_run and doomed:
            for kind in (CHUNKS_DIR, SEALED_CHUNKS_DIR):
                RemoteChunkCache(state_dir / CHUNK_CACHE_DIR, remote, kind).drop()
            run = f"{own_runs}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
            for start in range(0, len(doomed), MOVE_BATCH):
                batch = doomed[start : start + MOVE_BATCH]
                rclone.copy_within(remote, REPOSITORY_DIR, run, batch, TRANSFERS, move=True)
            put_back = _sweep(remote, run)
            log.info(
                "removed %d unused chunks from the remote repository",
                len(doomed) - len(put_back),
            )
        removed = [path for path in doomed if path not in put_back]
        return RemoteGcResult(
            chunks=len(stored),
            named=len(stored) - len(unnamed),
            young=len(unnamed) - len(doomed),
            removed=len(removed),
            removed_bytes=sum(stored[path][0] for path in removed),
            put_back=len(put_back),
            dry_run=dry_run,
        )


def _sweep(remote: rclone.Remote, run: str) -> set[str]:
    """Step 3 for the fossil directory `run`, whose moves have all ended: the fossils an
    index now names go back to the chunk directory, then the directory goes; the paths
    ("chunks/ab/ab12...ef") put back."""
    fossils = rclone.list_file_sizes(remote, run)
    named = _named_chunks(remote)
    back = sorted(path for path in fossils if path.split("/", 1)[-1] in named)
    if back:
        log.warning("putting back %d chunks that a new backup names", len(back))
    for start in range(0, len(back), MOVE_BATCH):
        batch = back[start : start + MOVE_BATCH]
        rclone.copy_within(remote, run, REPOSITORY_DIR, batch, TRANSFERS)
    rclone.purge(remote, run)
    return set(back)


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
