"""The repository offsite: the chunks of local repository backups copied to the remote.

Layout on the remote: the same as under DEST, below the remote's location::

    REMOTE/.virtbackup-repository/repository.json, secrets/<id>.age
    REMOTE/.virtbackup-repository/chunks/ab/ab12...ef        (sealed-chunks/ when encrypted)
    REMOTE/<host>/<domain>/<stamp>/manifest.json, domain.xml, vda.raw.idx

Order of an upload (RemoteStore.upload sends the backup directory after the chunks):
the repository's description, then the chunks the backup's indexes name that the remote
probably lacks, then the indexes and the domain XML, then a check that every chunk the
indexes name is there (what is not is sent again), the manifest last. A remote backup
without its manifest is no backup (listing, restore and retention skip it), so a backup
whose manifest is on the remote never names a chunk that was not there before it; the
check comes after the indexes so that a gc of another host cannot take a chunk between
the check and the index that protects it (engine/stores/remote_gc.py).

Many hosts share one remote repository: repository.json goes up only when the remote
has none (or one from before the first encrypted backup), and an upload stops when the
remote's says other chunk settings or another secret than the local repository's.

What the remote holds: a cache of remote chunk paths in the host's state directory
(`RemoteChunkCache`), filled by one listing of the chunk directory when it is missing or
older than CACHE_REFRESH_SECONDS. It is trusted only to say what is probably there:
- chunks it does not know are sent (rclone skips those that arrived whole earlier);
- every chunk the backup names is checked before the manifest goes up, by listing only
  the prefix directories (chunks/ab/) they live in, with their sizes: a missing or
  cut-off chunk is sent again, and the listed prefixes replace what the cache knew.
  Listing costs one request per thousand names on S3, while looking each chunk up would
  cost one per chunk: listing the prefixes involved is the cheaper check as soon as a
  backup names more than a thousandth of the repository's chunks, and it never reads
  the prefixes the backup does not use.

Chunks never change once named, and rclone copy sends a file under its final name:
S3 makes an object visible only when it is whole; on SFTP and FTP a killed upload leaves
a shorter file there, which the size comparison of the next copy and of the check finds
and sends again. Encrypted backups' chunks and manifests are sealed before they reach
DEST, so the remote only ever sees sealed chunks, their sizes and their number.

Reading a remote backup (`fetch_backup`, for restore and verify) copies the chunks its
indexes name into a private temporary directory laid out as a DEST, several transfers
in flight, and the local readers check each chunk against its name as they use it.
Nothing is fetched whose listed size is beyond what its kind can be (an index of the
largest disk, a description, a chunk of the repository's chunk size): the copy is
bounded by what the backup can need, whatever the remote holds.
"""

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from virtbackup.adapters import age, rclone
from virtbackup.adapters.atomic_file import write_atomically
from virtbackup.adapters.journal import ensure_state_subdir
from virtbackup.core.backup_errors import CorruptBackup, RemoteError
from virtbackup.core.repository_format import (
    CHUNK_PATH,
    CHUNKS_DIR,
    CONFIG_FILE,
    CONFIG_LIMIT,
    REPOSITORY_DIR,
    SEALED_CHUNKS_DIR,
    SECRETS_DIR,
    RepositoryConfig,
    RepositoryFormatError,
    chunk_path,
    is_index_file_name,
    parse_config,
)
from virtbackup.engine.datapath.frames import max_frame_size
from virtbackup.engine.stores.backup_access import SEALED_MANIFEST
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_backups import sealed_index_names

log = logging.getLogger(__name__)

CHUNK_CACHE_DIR = "remote-chunks"  # in the state directory
CACHE_REFRESH_SECONDS = 7 * 24 * 3600  # a full listing at least once a week
CACHE_HEADER = "virtbackup remote chunks 1"
UPLOAD_BATCH = 2000  # chunks per rclone copy: the cache is saved after each
TRANSFERS = 8  # chunk uploads in flight
INDEX_LIMIT = 64 * 1024 * 1024  # an index of a 14 TiB disk; a larger one is not ours


class RemoteChunkCache:
    """The chunk paths ("ab/ab12...ef") one chunk directory of one remote probably holds,
    kept in a file of the state directory: a header line with the time of the last full
    listing, then one path per line."""

    def __init__(self, cache_dir: Path, remote: rclone.Remote, kind: str) -> None:
        # a directory of the state directory: ours, or refused (a link into a directory
        # others can write would let them say what the remote holds)
        ensure_state_subdir(cache_dir)
        key = hashlib.sha256(f"{remote.location}\n{kind}".encode()).hexdigest()[:24]
        self.path = cache_dir / f"{key}.chunks"
        self.listed_at = 0.0
        self.names: set[str] = set()

    def load(self) -> bool:
        """Read the cache; False when there is none or it is damaged or stale."""
        try:
            lines = self.path.read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError):
            return False
        header = lines[0].split(" ") if lines else []
        if " ".join(header[:-1]) != CACHE_HEADER:
            return False
        try:
            self.listed_at = float(header[-1])
        except ValueError:
            return False
        if not 0 <= time.time() - self.listed_at < CACHE_REFRESH_SECONDS:
            return False
        self.names = {line for line in lines[1:] if CHUNK_PATH.fullmatch(line)}
        return True

    def refill(self, names: Iterable[str]) -> None:
        self.names = {name for name in names if CHUNK_PATH.fullmatch(name)}
        self.listed_at = time.time()

    def replace_prefixes(self, prefixes: Iterable[str], listed: Iterable[str]) -> None:
        """What a listing of the prefix directories `prefixes` found replaces what the
        cache knew of them."""
        gone = set(prefixes)
        self.names = {name for name in self.names if name[:2] not in gone}
        self.names.update(name for name in listed if CHUNK_PATH.fullmatch(name))

    def drop(self) -> None:
        """Forget what the remote holds: the next upload lists it again."""
        self.path.unlink(missing_ok=True)

    def save(self) -> None:
        text = f"{CACHE_HEADER} {self.listed_at!r}\n" + "".join(
            f"{name}\n" for name in sorted(self.names)
        )
        write_atomically(self.path, text.encode("ascii"))


class RemoteRepository:
    """The repository on the remote, filled from the local one under DEST."""

    def __init__(self, remote: rclone.Remote, cache_dir: Path) -> None:
        self.remote = remote
        self.cache_dir = cache_dir

    def upload_chunks(self, store: LocalStore, backup: Path) -> Callable[[], None]:
        """Send the chunks the backup's indexes name that the remote probably lacks; the
        check to run once its indexes are on the remote and before its manifest goes up,
        which makes sure every chunk they name is there (engine/stores/remote_gc.py says
        why only a check after the indexes protects them from a gc of another host).
        The repository's description and encrypted secrets go first, so a host with
        nothing but the identity can read what follows."""
        sealed = (backup / SEALED_MANIFEST).is_file()
        chunks = ChunkStore(store.dest, sealed)
        kind = SEALED_CHUNKS_DIR if sealed else CHUNKS_DIR
        remote_dir = f"{REPOSITORY_DIR}/{kind}"
        self._send_description(chunks)
        needed = _named_chunks(store, backup)
        cache = RemoteChunkCache(self.cache_dir, self.remote, kind)
        if not cache.load():
            cache.refill(rclone.list_file_sizes(self.remote, remote_dir))
            cache.save()
        new = sorted(needed - cache.names)
        self._send(chunks, remote_dir, new, cache)

        def confirm() -> None:
            resent = self._recheck(chunks, remote_dir, needed, cache)
            log.info(
                "%s: %d of its %d chunks sent offsite (%d of them again: the remote had lost them)",
                backup.name,
                len(new) + len(resent),
                len(needed),
                len(resent),
            )

        return confirm

    def _send_description(self, chunks: ChunkStore) -> None:
        """Send repository.json unless the remote's says the same, or says less (before
        the first encrypted backup); refuse a remote made with other settings, whose
        description and secrets another host's backups rely on. A secret already there
        is kept: one with the same name opens to the same secret, as the ids match."""
        ours = chunks.config
        theirs = remote_config(self.remote)
        if theirs is not None and (
            (theirs.chunk_size, theirs.chunk_names) != (ours.chunk_size, ours.chunk_names)
            or theirs.secret_id not in (None, ours.secret_id)
        ):
            raise RemoteError(
                f"the remote repository {self.remote.path(REPOSITORY_DIR)} was made with "
                f"other settings than {chunks.root / CONFIG_FILE} (chunk size, names or "
                "secret): refusing to mix them"
            )
        if theirs is None or (theirs.secret_id is None and ours.secret_id is not None):
            rclone.copy_listed(self.remote, chunks.root, REPOSITORY_DIR, [CONFIG_FILE])
        secrets = [
            str(path.relative_to(chunks.root)) for path in chunks.root.glob(f"{SECRETS_DIR}/*.age")
        ]
        rclone.copy_listed(self.remote, chunks.root, REPOSITORY_DIR, secrets, TRANSFERS, keep=True)

    def _send(
        self, chunks: ChunkStore, remote_dir: str, names: list[str], cache: RemoteChunkCache
    ) -> None:
        """Send the chunks `names` in batches, the cache saved after each: a run killed
        in a batch sends that batch again next time (rclone skips what arrived whole).
        Each is marked as used now first: rclone gives the remote copy the local file's
        time, and remote garbage collection spares chunks younger than its grace."""
        for start in range(0, len(names), UPLOAD_BATCH):
            batch = names[start : start + UPLOAD_BATCH]
            for name in batch:  # the remote copy takes its time: that of its upload
                if not chunks.touch(name.rsplit("/", 1)[1]):
                    raise RemoteError(
                        f"chunk {chunks.chunks / name} is not in the local repository"
                    )
            rclone.copy_listed(self.remote, chunks.chunks, remote_dir, batch, TRANSFERS)
            cache.names.update(batch)
            cache.save()

    def _recheck(
        self, chunks: ChunkStore, remote_dir: str, vouched: set[str], cache: RemoteChunkCache
    ) -> list[str]:
        """List the prefixes of the chunks `vouched` for; send again those the remote
        lacks or holds cut off."""
        if not vouched:
            return []
        prefixes, listed = _list_prefixes(self.remote, remote_dir, vouched)
        cache.replace_prefixes(prefixes, listed)
        lost = sorted(name for name in vouched if listed.get(name) != _local_size(chunks, name))
        if lost:
            log.warning(
                "the remote lacks %d chunks it was known to hold (%s...): sending them again",
                len(lost),
                lost[0],
            )
        self._send(chunks, remote_dir, lost, cache)
        cache.save()
        return lost


def remote_config(remote: rclone.Remote) -> RepositoryConfig | None:
    """The remote repository's description; None when it has none yet; RemoteError for
    one this version cannot read."""
    path = f"{REPOSITORY_DIR}/{CONFIG_FILE}"
    if not rclone.list_file_sizes(remote, REPOSITORY_DIR, [f"+ /{CONFIG_FILE}", "- **"]):
        return None
    try:
        return parse_config(rclone.read_text(remote, path))
    except (RepositoryFormatError, UnicodeDecodeError) as err:
        raise RemoteError(f"{remote.path(path)} is not a repository description: {err}") from None


def remote_secrets(remote: rclone.Remote) -> list[str]:
    """The encrypted secrets of the remote repository (secrets/<id>.age)."""
    listed = rclone.list_file_sizes(remote, REPOSITORY_DIR, [f"+ /{SECRETS_DIR}/*.age", "- **"])
    return sorted(listed)


def _named_chunks(store: LocalStore, backup: Path) -> set[str]:
    """The chunk paths ("ab/ab12...ef") the indexes of a local backup name."""
    files = store.files(backup.parent.name, backup.name)
    named: set[str] = set()
    for index in sorted(os.listdir(backup)):
        if is_index_file_name(index):
            named.update(chunk_path(name) for name in sealed_index_names(files, index))
    return named


def _list_prefixes(
    remote: rclone.Remote, remote_dir: str, names: Iterable[str]
) -> tuple[list[str], dict[str, int]]:
    """The prefix directories (chunks/ab/) the chunk paths `names` live in, and every
    chunk the remote holds in them with its size: one listing of just those."""
    prefixes = sorted({name[:2] for name in names})
    rules = [*(f"+ /{prefix}/*" for prefix in prefixes), "- **"]
    return prefixes, rclone.list_file_sizes(remote, remote_dir, rules)


def _local_size(chunks: ChunkStore, path: str) -> int:
    try:
        return (chunks.chunks / path).stat().st_size
    except OSError as err:
        raise RemoteError(
            f"chunk {chunks.chunks / path} is gone from the local repository: {err.strerror}"
        ) from None


def fetch_backup(remote: rclone.Remote, path: str, files: dict[str, int], scratch: Path) -> Path:
    """Copy what reading the remote repository backup at `path` (<host>/<domain>/<stamp>,
    holding `files` of the listed sizes) needs into the private directory `scratch`, laid
    out as a DEST: its indexes, the repository's description and secrets, and every chunk
    the indexes name (in batches, TRANSFERS at a time); the backup's directory there. The
    copies are as untrusted as the remote: the reader checks each index against its
    manifest and each chunk against its name, as for a local backup. Before that, no
    file is fetched whose listed size is more than one of its kind can have: a remote
    must not fill the scratch directory with one endless object."""
    host, domain, stamp = path.split("/")
    indexes = {name: size for name, size in files.items() if is_index_file_name(name)}
    _refuse_oversized(remote, path, indexes, INDEX_LIMIT)
    local = scratch / host
    backup = local / domain / stamp
    backup.mkdir(mode=0o700, parents=True)
    rclone.fetch_listed(remote, path, backup, sorted(indexes), TRANSFERS)
    root = local / REPOSITORY_DIR
    root.mkdir(mode=0o700)
    described = rclone.list_file_sizes(
        remote, REPOSITORY_DIR, [f"+ /{CONFIG_FILE}", f"+ /{SECRETS_DIR}/*.age", "- **"]
    )
    _refuse_oversized(remote, REPOSITORY_DIR, described, CONFIG_LIMIT)
    rclone.fetch_listed(remote, REPOSITORY_DIR, root, sorted(described), TRANSFERS)
    store = LocalStore(local)
    sealed = SEALED_MANIFEST in files
    kind = SEALED_CHUNKS_DIR if sealed else CHUNKS_DIR
    named = sorted(_named_chunks(store, backup))
    limit = max_frame_size(ChunkStore(local, sealed).config.chunk_size)
    if sealed:
        limit = age.sealed_size_limit(limit)
    for start in range(0, len(named), UPLOAD_BATCH):
        batch = named[start : start + UPLOAD_BATCH]
        remote_dir = f"{REPOSITORY_DIR}/{kind}"
        _, listed = _list_prefixes(remote, remote_dir, batch)
        _refuse_oversized(remote, remote_dir, {name: listed.get(name, 0) for name in batch}, limit)
        rclone.fetch_listed(remote, remote_dir, root / kind, batch, TRANSFERS)
    return backup


def _refuse_oversized(remote: rclone.Remote, path: str, sizes: dict[str, int], limit: int) -> None:
    """CorruptBackup for the first of the remote files `sizes` (below `path`) that is
    larger than `limit` bytes, before anything of it is fetched."""
    for name, size in sorted(sizes.items()):
        if size > limit:
            raise CorruptBackup(
                f"{remote.path(path, name)} is too large to be ours ({size} bytes on the remote)"
            )
