"""Verify the whole repository of a DEST: every chunk (or a random sample) read once,
however many backups use it, and every repository backup's indexes checked.

Two passes keep memory bounded by the damage found, not by the repository's size:
1. each stored chunk is read, decoded and hashed; a chunk whose sha256 is not its name
   (damaged, or another chunk's bytes under this name) is remembered;
2. each repository backup's indexes are read (they exist and are the ones their
   manifests record) and each chunk they name is looked up: a missing chunk or one
   remembered as damaged collects the backups that use it.
Each problem is then one line naming the chunk and every backup that uses it.

The chunks of encrypted backups (sealed-chunks/) are checked the same way, their indexes
read without a key: without an identity only that every chunk they name exists; with
`identity` each chunk is also decrypted, decoded and checked against its keyed name
(under the key of any set of recipients whose secret the identity opens). A chunk the
identity cannot decrypt is encrypted to other recipients: it counts as not read, and
its existence is still checked through the indexes.
"""

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import age
from virtbackup.core.backup_errors import CorruptBackup, StoreError
from virtbackup.core.manifest import Sealed
from virtbackup.core.progress import ProgressSink
from virtbackup.core.repository_format import (
    SECRETS_DIR,
    chunk_key,
    chunk_path,
    is_index_file_name,
    keyed_name,
)
from virtbackup.core.streamformat import max_stored_length
from virtbackup.engine.datapath.frames import FrameError, decode_chunk
from virtbackup.engine.datapath.stream_reader import map_bounded
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_backups import (
    chunk_file_size,
    holds_index,
    index_chunks,
    indexed_backup,
    sealed_index_names,
)
from virtbackup.engine.stores.repository_secret import open_secret_file

ALL_CHUNKS = 100.0
NOT_OURS = "not encrypted to the identity"  # a chunk of other recipients: counted as unread


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
    identity: Path | None = None,
) -> RepositoryCheck:
    """Check the repository of `dest` (see the module docstring); StoreError when `dest`
    holds none, CorruptBackup when its description cannot be read."""
    plain = ChunkStore(dest)
    if not plain.exists():
        raise StoreError(
            f"{dest} holds no repository",
            "give the --dest that repository backups were written to",
        )
    rng = rng or random.Random()
    sealed = ChunkStore(dest, sealed=True)
    opener = _SealedOpener(sealed, identity) if identity is not None else None
    plain_chunks = _check_chunks(plain, progress, sample_percent, rng, workers, _chunk_problem)
    if opener is None:
        sealed_chunks = _count_chunks(sealed)
    else:
        check = opener.problem
        sealed_chunks = _check_chunks(sealed, progress, sample_percent, rng, workers, check)
    problems: list[str] = []
    plain_users = _Users(plain_chunks.damaged, "")
    sealed_users = _Users(sealed_chunks.damaged, f"{sealed.chunks.name}/")
    store = LocalStore(dest)
    backups = 0
    for info in store.list_backups():
        backup = indexed_backup(store, info)
        try:
            if isinstance(info.manifest, Sealed):
                files = store.files(info.domain, info.stamp)
                names = [f.file for f in info.manifest.files if is_index_file_name(f.file)]
                backups += bool(names)
                indexes = (sealed_index_names(files, name) for name in names)
                sealed_users.check(sealed, f"{info.domain}/{info.stamp}", indexes)
            elif backup is not None:
                backups += 1
                chunk_size = plain.config.chunk_size
                indexes = (
                    (name for name, _ in index_chunks(backup.files, disk, chunk_size))
                    for disk in backup.indexed_disks
                )
                plain_users.check(plain, backup.label, indexes)
            elif info.manifest is None and holds_index(Path(info.path)):  # cannot be checked
                problems.append(f"{info.domain}/{info.stamp}: {info.problem}")
        except CorruptBackup as err:
            problems.append(f"{info.domain}/{info.stamp}: {err}")
    problems += plain_users.problems() + sealed_users.problems()
    stored = plain_chunks.stored + sealed_chunks.stored
    return RepositoryCheck(stored, plain_chunks.read + sealed_chunks.read, backups, tuple(problems))


@dataclass(frozen=True)
class _ChunksRead:
    stored: int
    read: int
    damaged: dict[str, str]  # chunk name -> why


_ChunkCheck = Callable[[ChunkStore, str, int, int], str | None]


def _count_chunks(chunk_store: ChunkStore) -> _ChunksRead:
    """The stored chunks, none of them read (encrypted, and no identity given)."""
    return _ChunksRead(sum(1 for _ in chunk_store.names()), 0, {})


def _check_chunks(
    chunk_store: ChunkStore,
    progress: ProgressSink,
    sample_percent: float,
    rng: random.Random,
    workers: int,
    chunk_problem: _ChunkCheck,
) -> _ChunksRead:
    """Read every chunk, or a random sample of them; the damaged ones, with why. The
    chunks are listed twice (first to size the progress) rather than kept."""
    chunk_size = chunk_store.config.chunk_size
    limit = max_stored_length(chunk_size)
    if chunk_store.sealed:
        limit = age.sealed_size_limit(limit)
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
        return name, size, chunk_problem(chunk_store, name, chunk_size, limit)

    damaged: dict[str, str] = {}
    read = 0
    label = chunk_store.chunks.name
    progress.on_start(int(stored_bytes * min(sample_percent, ALL_CHUNKS) / ALL_CHUNKS), label)
    try:
        for name, size, problem in map_bounded(check, chosen, workers):
            read += problem is not NOT_OURS
            if problem is not None and problem is not NOT_OURS:
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


class _SealedOpener:
    """Checks encrypted chunks with an identity: the keys of every set of recipients
    whose secret it opens."""

    def __init__(self, chunk_store: ChunkStore, identity: Path) -> None:
        self.identity = identity
        self.keys = []
        paths = sorted((chunk_store.root / SECRETS_DIR).glob("*.age"))
        for path in paths:
            try:
                secret = open_secret_file(chunk_store, identity, path)
            except age.WrongIdentity:
                continue  # a set of recipients this identity is not one of
            self.keys.append(chunk_key(secret, path.stem))
        if paths and not self.keys:
            raise age.WrongIdentity(
                f"no repository secret of {chunk_store.root} opens with identity {identity}",
                "give the identity of a recipient of its encrypted backups",
            )

    def problem(
        self, chunk_store: ChunkStore, name: str, chunk_size: int, limit: int
    ) -> str | None:
        try:
            sealed = chunk_store.read(name, limit)
        except CorruptBackup as err:
            return f"cannot be read ({err})"
        try:
            frame = age.decrypt_bytes(self.identity, sealed, f"chunk {name}")
            data = decode_chunk(frame, chunk_size)
        except age.WrongIdentity:
            return NOT_OURS  # encrypted to other recipients: not read
        except (CorruptBackup, FrameError) as err:
            return f"is damaged ({err})"
        digest = hashlib.sha256(data).digest()
        if all(keyed_name(key, digest) != name for key in self.keys):
            return "is damaged: its data does not match its name"
        return None


class _Users:
    """The damaged or missing chunks of one chunk directory and the backups using them."""

    def __init__(self, damaged: dict[str, str], prefix: str) -> None:
        self.damaged = damaged
        self.prefix = prefix  # of a chunk's path in messages
        self.missing: set[str] = set()
        self.users: dict[str, list[str]] = defaultdict(list)

    def check(self, chunk_store: ChunkStore, backup: str, indexes: Iterable[Iterable[str]]) -> None:
        """Look up every chunk the backup's indexes name; note the backup as a user of
        each that is damaged or missing, once its indexes have proved to be its own (a
        replaced index is one problem, not one per chunk it names)."""
        bad: set[str] = set()  # damaged or missing chunks this backup uses
        for names in indexes:
            for name in names:
                if name in self.damaged or name in self.missing or name in bad:
                    bad.add(name)
                elif chunk_file_size(chunk_store, name) is None:
                    bad.add(name)
        for name in bad:
            if name not in self.damaged:
                self.missing.add(name)
            self.users[name].append(backup)

    def problems(self) -> list[str]:
        found = []
        for name, why in self.damaged.items():
            used = _used_by(self.users.get(name, []))
            found.append(f"chunk {self.prefix}{chunk_path(name)} {why}; {used}")
        for name in sorted(self.missing):
            used = _used_by(self.users[name])
            found.append(f"chunk {self.prefix}{chunk_path(name)} is missing; {used}")
        return found


def _used_by(labels: list[str]) -> str:
    if not labels:
        return "used by no backup (remove it: a new backup would reuse it)"
    return f"used by {', '.join(sorted(labels))}"
