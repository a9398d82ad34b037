"""The remote store: offsite copies on an rclone remote.

Layout: REMOTE/<host>/<domain>/<UTC stamp>/ with the same files as the local backup
(a local verified.json stays local: `verify --remote` writes the remote one). Every host
writes below its own name only, so several hosts can share one remote: listing,
retention and leftover removal never look at another host's directory, and the local
host lock already keeps two runs of one host apart.

A remote backup is complete when its manifest.json is there: it is uploaded last, after
the other files were copied and checked (sizes, and hashes where the backend keeps
them). A directory without it is an interrupted upload: the next run uploads the local
backup again (rclone skips the files that arrived whole) or, when the local copy is
gone, removes the leftover.

Two modes: copy (the local backup is complete first, then copied; a failed upload never
touches it) and only (`--remote-only`: the streams go through a pipe straight to the
remote, nothing is kept locally).
"""

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from virtbackup.adapters import rclone
from virtbackup.adapters.locks import remote_repository_lock
from virtbackup.core.backup_errors import CorruptBackup, RemoteError
from virtbackup.core.errors import Interrupted, UsageError, VirtbackupError
from virtbackup.core.repository_format import is_index_file_name
from virtbackup.core.verify_record import VerifyRecord, build_verify_record
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.remote_repository import (
    CHUNK_CACHE_DIR,
    RemoteRepository,
    fetch_backup,
)
from virtbackup.engine.stores.repository_backups import holds_index
from virtbackup.engine.stores.store import (
    MANIFEST,
    VERIFIED,
    AbortUnlessCommitted,
    BackupFiles,
    BackupInfo,
    allocate_stamp,
    check_backup_name,
    check_domain_name,
    describe_backup,
    is_domain_dir_name,
    is_stamp,
    missing_file,
    read_limit,
)

log = logging.getLogger(__name__)

_COPY_BUFFER = 1 << 20


class RemoteFiles:
    """The files of one backup directory on the remote, for restore and verify."""

    def __init__(self, remote: rclone.Remote, path: str) -> None:
        self.remote = remote
        self.path = path
        self.label = remote.path(path)
        self._sizes: dict[str, int] | None = None
        self.fetched: Path | None = None  # a local copy of its indexes, beside their chunks

    def read(self, name: str) -> bytes:
        """A metadata file, at most read_limit(name) bytes of it: a remote that serves
        more is refused, not read to the end."""
        size = self.size(name)
        if size is None:
            raise missing_file(self.label, name, bool(self.sizes()))
        limit = read_limit(name)
        what = f"{self.label}/{name}"
        if size > limit:
            raise CorruptBackup(f"{what} is too large to be ours ({size} bytes)")
        with rclone.download_stream(self.remote, f"{self.path}/{name}") as pipe:
            data = pipe.read(limit + 1)
            if len(data) > limit:
                raise CorruptBackup(
                    f"{what} is too large to be ours (the remote served more than {limit} "
                    f"bytes, listed as {size})"
                )
        return data

    def size(self, name: str) -> int | None:
        return self.sizes().get(name)

    @contextmanager
    def stream(self, name: str) -> Iterator[IO[bytes]]:
        with rclone.download_stream(self.remote, f"{self.path}/{name}") as pipe:
            yield pipe

    def local_path(self, name: str) -> Path | None:
        """The fetched copy of an index of a repository backup (`fetched_repository`)."""
        if self.fetched is None or not is_index_file_name(name):
            return None
        return self.fetched / name

    def record_verification(self, record: VerifyRecord) -> None:
        """verified.json beside the remote manifest: what `verify --remote` found there
        (a local verify says nothing of the remote copy, so upload never sends it)."""
        rclone.write_text(self.remote, f"{self.path}/{VERIFIED}", build_verify_record(record))

    def sizes(self) -> dict[str, int]:
        """Each file of the backup directory and its size (listed once)."""
        if self._sizes is None:
            entries = rclone.list_entries(self.remote, self.path)
            self._sizes = {e.path: e.size for e in entries if not e.is_dir}
        return self._sizes


@dataclass(frozen=True)
class RemoteBackups:
    complete: list[str]  # stamps, newest first
    incomplete: list[str]  # stamps of interrupted uploads


class RemoteStore:
    """This host's backups on an rclone remote."""

    def __init__(self, remote: rclone.Remote, host: str, only: bool = False) -> None:
        if not host or "/" in host or host.startswith("."):
            raise UsageError(f"host name {host!r} cannot name a directory on the remote")
        self.remote = remote
        self.host = host  # the namespace of this host on the remote
        self.only = only  # stream to the remote, keep no local copy
        self.label = remote.path(host)

    def backup_path(self, domain: str, stamp: str) -> str:
        return f"{self.host}/{domain}/{stamp}"

    def files(self, domain: str, stamp: str) -> RemoteFiles:
        check_backup_name(domain, stamp)
        return RemoteFiles(self.remote, self.backup_path(domain, stamp))

    def domains(self) -> list[str]:
        entries = rclone.list_entries(self.remote, self.host)
        return sorted(e.path for e in entries if e.is_dir and is_domain_dir_name(e.path))

    def backups_of(self, domain: str) -> RemoteBackups:
        entries = rclone.list_entries(self.remote, f"{self.host}/{domain}", recursive=True)
        stamps = {e.path for e in entries if e.is_dir and is_stamp(e.path)}
        files = [e.path.split("/") for e in entries if not e.is_dir]
        complete = {parts[0] for parts in files if parts[1:] == [MANIFEST]}
        done = sorted(stamps & complete, reverse=True)
        incomplete = sorted(stamps - complete, reverse=True)
        return RemoteBackups(done, incomplete)

    def list_backups(
        self, domain: str | None = None, now: datetime | None = None
    ) -> list[BackupInfo]:
        """Complete remote backups of this host, by domain, newest first (reads each
        public manifest: the key is never needed to list). As locally, one whose manifest
        names another domain or whose time lies in the future is listed with that
        problem."""
        if domain is not None:
            check_domain_name(domain)  # a name, never a path out of the store
        now = now or datetime.now(UTC)
        found = []
        for name in [domain] if domain else self.domains():
            for stamp in self.backups_of(name).complete:
                found.append(self._describe(name, stamp, now))
        return found

    def _describe(self, domain: str, stamp: str, now: datetime) -> BackupInfo:
        files = self.files(domain, stamp)
        size = sum(n for name, n in files.sizes().items() if name != VERIFIED)
        return describe_backup(domain, stamp, files, files.label, size, now)

    def upload(self, backup: Path, before_manifest: Callable[[], None] | None = None) -> str:
        """Copy a complete local backup; its manifest goes last, once the rest is checked
        (and `before_manifest` has run). Resumes an interrupted upload of the same backup
        (whole files are skipped)."""
        target = self.backup_path(backup.parent.name, backup.name)
        later = [f"/{MANIFEST}", f"/{VERIFIED}"]
        rclone.copy_dir(self.remote, backup, target, exclude=later)
        rclone.check_dir(self.remote, backup, target, exclude=later)
        if before_manifest is not None:
            before_manifest()
        rclone.copy_file(self.remote, backup / MANIFEST, f"{target}/{MANIFEST}")
        return self.remote.path(target)

    def remove(self, domain: str, stamp: str) -> None:
        """Remove a backup, its manifest first: a removal cut short leaves an incomplete
        upload, never a backup missing some of its files."""
        check_backup_name(domain, stamp)
        rclone.delete_file(self.remote, f"{self.backup_path(domain, stamp)}/{MANIFEST}")
        rclone.purge(self.remote, self.backup_path(domain, stamp))

    def remove_leftovers(self, domain: str, keep: Collection[str]) -> list[str]:
        """Remove what interrupted uploads of `domain` left, except those in `keep` (the
        stamps still to be uploaded from the local store); the stamps removed."""
        doomed = [stamp for stamp in self.backups_of(domain).incomplete if stamp not in keep]
        for stamp in doomed:
            self.remove(domain, stamp)
            log.info("%s: removed the remote leftover %s of an interrupted upload", domain, stamp)
        return doomed

    def begin(self, domain: str, now: datetime) -> "RemotePartial":
        """A new backup streamed straight to the remote (--remote-only)."""
        check_domain_name(domain)
        existing = self.backups_of(domain)
        taken = set(existing.complete) | set(existing.incomplete)
        return RemotePartial(self, domain, allocate_stamp(domain, now, lambda s: s not in taken))


@contextmanager
def fetched_repository(source: Path | BackupFiles) -> Iterator[None]:
    """Within the block, a remote backup of the repository reads its indexes and chunks
    from a private temporary copy (engine/stores/remote_repository.fetch_backup),
    removed at the end; its other files are still read from the remote. Nothing changes
    for a local backup or a remote one of streams."""
    if not isinstance(source, RemoteFiles) or not any(map(is_index_file_name, source.sizes())):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="virtbackup-fetch-") as scratch:
        source.fetched = fetch_backup(source.remote, source.path, source.sizes(), Path(scratch))
        try:
            yield
        finally:
            source.fetched = None


def ship(remote: RemoteStore, store: LocalStore, domain: str, state_dir: Path) -> list[str]:
    """Upload every local backup of `domain` that is not complete on the remote, newest
    first (the new one, then any an earlier run failed to send); their locations. One
    listed with a problem (unreadable, of another domain, from the future) stays here.
    A backup of the repository sends the chunks the remote lacks first
    (engine/stores/remote_repository.py), holding this host's lock of the remote
    repository shared (in `state_dir`, beside the cache of remote chunk names)."""
    done = set(remote.backups_of(domain).complete)
    shipped = []
    for backup in store.list_backups(domain):
        if backup.stamp not in done and backup.manifest is not None and backup.problem is None:
            assert isinstance(backup.path, Path)
            if holds_index(backup.path):
                with remote_repository_lock(state_dir, shared=True):
                    repository = RemoteRepository(remote.remote, state_dir / CHUNK_CACHE_DIR)
                    confirm = repository.upload_chunks(store, backup.path)
                    shipped.append(remote.upload(backup.path, before_manifest=confirm))
            else:
                shipped.append(remote.upload(backup.path))
            log.info("%s: copied %s offsite", domain, backup.stamp)
    return shipped


class RemotePartial(AbortUnlessCommitted):
    """A backup being streamed to the remote. Each file goes through a counting, hashing
    pipe into `rclone rcat`; commit checks every file's size (and hash, where the
    backend keeps one) and only then uploads the manifest. Leaving the block without
    commit removes what was uploaded."""

    def __init__(self, store: RemoteStore, domain: str, stamp: str) -> None:
        self.store = store
        self.remote = store.remote
        self.stamp = stamp
        self.path = store.backup_path(domain, stamp)
        self.location = self.remote.path(self.path)
        self.sent: dict[str, tuple[int, dict[str, str]]] = {}  # name: (size, hashes)
        self.manifest: str | None = None
        self.committed = False
        offered = rclone.hash_types(self.remote)
        self.hashes = [name for name in ("md5", "sha1") if name in offered][:1]

    @contextmanager
    def create(self, name: str) -> Iterator[IO[bytes]]:
        """A pipe for the bytes of file `name`."""
        with rclone.upload_stream(self.remote, f"{self.path}/{name}") as upload:
            read_end, write_end = os.pipe()
            tee = _Tee(read_end, upload, self.hashes)
            tee.start()
            try:
                with open(write_end, "wb", buffering=0) as sink:
                    yield sink
            except BaseException as err:
                tee.join()
                # The upload broke first: its error says why (a signal still ends the run).
                if tee.error is not None and not isinstance(err, Interrupted):
                    raise tee.error from None
                raise
            tee.join()
            if tee.error is not None:
                raise tee.error
        self.sent[name] = (tee.size, tee.hexdigests())

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.create(name) as sink:
            sink.write(data)

    def write_text(self, name: str, text: str) -> None:
        if name == MANIFEST:
            self.manifest = text  # the last file: uploaded by commit, after the checks
            return
        self.write_bytes(name, text.encode())

    def size_of(self, name: str) -> int:
        return self.sent[name][0]

    def commit(self) -> str:
        self._check_sent()
        assert self.manifest is not None, "the manifest is written before commit"
        rclone.write_text(self.remote, f"{self.path}/{MANIFEST}", self.manifest)
        self.committed = True
        return self.location

    def abort(self) -> None:
        try:
            rclone.purge(self.remote, self.path)
        except VirtbackupError as err:
            log.warning("could not remove the incomplete remote backup: %s", err)

    def _check_sent(self) -> None:
        listed = {e.path: e.size for e in rclone.list_entries(self.remote, self.path)}
        for name, (size, digests) in self.sent.items():
            if listed.get(name) != size:
                raise RemoteError(
                    f"{self.location}/{name} has {listed.get(name)} bytes on the remote, "
                    f"{size} were sent"
                )
            for hash_type, digest in digests.items():
                remote_digest = rclone.hashsum(self.remote, hash_type, f"{self.path}/{name}")
                if remote_digest is not None and remote_digest != digest:
                    raise RemoteError(f"{self.location}/{name} differs from what was sent")


class _Tee(threading.Thread):
    """Copies a pipe into the upload, counting and hashing what passes."""

    def __init__(self, read_end: int, upload: IO[bytes], hashes: Sequence[str]) -> None:
        super().__init__(name="vb-upload", daemon=True)
        self.read_end = read_end
        self.upload = upload
        self.digests = {name: hashlib.new(name) for name in hashes}
        self.size = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with open(self.read_end, "rb", buffering=0) as source:
                while block := source.read(_COPY_BUFFER):
                    self.upload.write(block)
                    self.size += len(block)
                    for digest in self.digests.values():
                        digest.update(block)
        except BaseException as err:  # raised in the writing thread by raise_error
            self.error = err

    def hexdigests(self) -> dict[str, str]:
        return {name: digest.hexdigest() for name, digest in self.digests.items()}
