"""Offsite copies on an rclone remote.

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
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import IO

from virtbackup.adapters import rclone
from virtbackup.adapters.store import (
    MANIFEST,
    MANIFEST_LIMIT,
    RECORD_LIMIT,
    STAMP_FORMAT,
    VERIFIED,
    AbortUnlessCommitted,
    BackupInfo,
    BackupStore,
    backup_placement,
    check_domain_name,
    is_domain_dir_name,
    is_stamp,
    stamp_time,
)
from virtbackup.core.backup_errors import BackupNotFound, CorruptBackup, RemoteError
from virtbackup.core.errors import Interrupted, UsageError, VirtbackupError
from virtbackup.core.manifest import (
    ManifestFormatError,
    VerifyRecord,
    build_verify_record,
    parse_any_manifest,
    parse_verify_record,
)
from virtbackup.core.retention import Decision, Kept, Policy, apply_policy
from virtbackup.engine.stores.backup_access import missing_file, read_limit
from virtbackup.engine.stores.prune import PruneResult, candidate_of

log = logging.getLogger(__name__)

_COPY_BUFFER = 1 << 20


@dataclass(frozen=True)
class Offsite:
    remote: rclone.Remote
    host: str  # the namespace of this host on the remote
    only: bool = False  # stream to the remote, keep no local copy

    def __post_init__(self) -> None:
        if not self.host or "/" in self.host or self.host.startswith("."):
            raise UsageError(f"host name {self.host!r} cannot name a directory on the remote")


class RemoteFiles:
    """The files of one backup directory on the remote, for restore and verify."""

    def __init__(self, remote: rclone.Remote, path: str) -> None:
        self.remote = remote
        self.path = path
        self.label = remote.path(path)
        self._sizes: dict[str, int] | None = None

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
        return None

    def record_verification(self, record: VerifyRecord) -> None:
        """verified.json beside the remote manifest: what `verify --remote` found there
        (a local verify says nothing of the remote copy, so upload never sends it)."""
        rclone.write_text(self.remote, f"{self.path}/{VERIFIED}", build_verify_record(record))

    def verification(self) -> VerifyRecord | None:
        """The last `verify --remote` of this backup; None: never, or unreadable."""
        size = self.size(VERIFIED)
        if size is None or size > RECORD_LIMIT:
            return None
        try:
            return parse_verify_record(self.read(VERIFIED).decode())
        except (RemoteError, CorruptBackup, ManifestFormatError, UnicodeDecodeError):
            return None  # (not Interrupted: a signal still ends the listing)

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
    with_record: frozenset[str] = frozenset()  # complete stamps with a verified.json


class RemoteStore:
    def __init__(self, settings: Offsite) -> None:
        self.settings = settings
        self.remote = settings.remote

    def backup_path(self, domain: str, stamp: str) -> str:
        return f"{self.settings.host}/{domain}/{stamp}"

    def files(self, domain: str, stamp: str) -> RemoteFiles:
        check_domain_name(domain)
        if not is_stamp(stamp):
            raise UsageError(f"{stamp!r} is not a backup stamp like 20250125T183000Z")
        return RemoteFiles(self.remote, self.backup_path(domain, stamp))

    def domains(self) -> list[str]:
        entries = rclone.list_entries(self.remote, self.settings.host)
        return sorted(e.path for e in entries if e.is_dir and is_domain_dir_name(e.path))

    def backups_of(self, domain: str) -> RemoteBackups:
        entries = rclone.list_entries(self.remote, f"{self.settings.host}/{domain}", recursive=True)
        stamps = {e.path for e in entries if e.is_dir and is_stamp(e.path)}
        files = [e.path.split("/") for e in entries if not e.is_dir]
        complete = {parts[0] for parts in files if parts[1:] == [MANIFEST]}
        recorded = {parts[0] for parts in files if parts[1:] == [VERIFIED]}
        done = sorted(stamps & complete, reverse=True)
        incomplete = sorted(stamps - complete, reverse=True)
        return RemoteBackups(done, incomplete, frozenset(recorded & complete))

    def list_backups(
        self, domain: str | None = None, now: datetime | None = None
    ) -> list[BackupInfo]:
        """Complete remote backups of this host, by domain, newest first (reads each
        public manifest: the key is never needed to list). As locally, one whose manifest
        names another domain or whose time lies in the future is listed with that
        problem."""
        now = now or datetime.now(UTC)
        found = []
        for name in [domain] if domain else self.domains():
            for stamp in self.backups_of(name).complete:
                found.append(self.describe(name, stamp, now))
        return found

    def describe(self, domain: str, stamp: str, now: datetime) -> BackupInfo:
        files = self.files(domain, stamp)
        manifest, problem = None, None
        try:
            size = files.size(MANIFEST)
            if size is not None and size > MANIFEST_LIMIT:
                raise CorruptBackup(f"it is too large to be ours ({size} bytes)")
            manifest = parse_any_manifest(files.read(MANIFEST).decode())
        except (
            BackupNotFound,
            CorruptBackup,
            RemoteError,
            ManifestFormatError,
            UnicodeDecodeError,
        ) as err:
            problem = f"manifest {files.label}/{MANIFEST} cannot be read: {err}"
        if manifest is not None:
            problem = backup_placement(domain, stamp, manifest, now)
        sizes = files.sizes()
        size = sum(n for name, n in sizes.items() if name != VERIFIED)
        return BackupInfo(domain, stamp, files.label, manifest, problem, size, files.verification())

    def upload(self, backup: Path) -> str:
        """Copy a complete local backup; its manifest goes last, once the rest is checked.
        Resumes an interrupted upload of the same backup (whole files are skipped)."""
        target = self.backup_path(backup.parent.name, backup.name)
        later = [f"/{MANIFEST}", f"/{VERIFIED}"]
        rclone.copy_dir(self.remote, backup, target, exclude=later)
        rclone.check_dir(self.remote, backup, target, exclude=later)
        rclone.copy_file(self.remote, backup / MANIFEST, f"{target}/{MANIFEST}")
        return self.remote.path(target)

    def remove(self, domain: str, stamp: str) -> None:
        rclone.purge(self.remote, self.backup_path(domain, stamp))

    def begin(self, domain: str, now: datetime) -> "RemotePartial":
        """A new backup streamed straight to the remote (--remote-only)."""
        check_domain_name(domain)
        stamp = now.astimezone(UTC).strftime(STAMP_FORMAT)
        existing = self.backups_of(domain)
        taken = set(existing.complete) | set(existing.incomplete)
        for number in range(1, 1000):
            candidate = stamp if number == 1 else f"{stamp}-{number}"
            if candidate not in taken:
                return RemotePartial(self, domain, candidate)
        raise RemoteError(f"too many backups of {domain} in the second {stamp}")


def ship(remote: RemoteStore, store: BackupStore, domain: str) -> list[str]:
    """Upload every local backup of `domain` that is not complete on the remote, newest
    first (the new one, then any an earlier run failed to send); their locations. One
    listed with a problem (unreadable, of another domain, from the future) stays here."""
    done = set(remote.backups_of(domain).complete)
    shipped = []
    for backup in store.list_backups(domain):
        if backup.stamp not in done and backup.manifest is not None and backup.problem is None:
            assert isinstance(backup.path, Path)
            shipped.append(remote.upload(backup.path))
            log.info("%s: copied %s offsite", domain, backup.stamp)
    return shipped


def prune_remote(
    remote: RemoteStore,
    domain: str,
    policy: Policy,
    tz: tzinfo,
    keep: set[str],
    allowed_signers: Path | None = None,
) -> list[str]:
    """Apply `policy` to the complete remote backups of `domain` (the newest is always
    kept) and remove leftovers of interrupted uploads that are not in `keep` (the stamps
    still to be uploaded from the local store). The stamps removed."""
    result = prune_remote_backups(remote, domain, policy, tz, allowed_signers=allowed_signers)
    doomed = [stamp for stamp in result.incomplete if stamp not in keep]
    for stamp in doomed:
        remote.remove(domain, stamp)
        log.info("%s: removed the remote leftover %s of an interrupted upload", domain, stamp)
    return [*result.removed, *doomed]


def prune_remote_backups(
    remote: RemoteStore,
    domain: str,
    policy: Policy,
    tz: tzinfo,
    *,
    dry_run: bool = False,
    allowed_signers: Path | None = None,
) -> PruneResult:
    """Retention on the complete remote backups of `domain`, as on the local store (the
    newest is always kept; one not readable, of another domain or from the future is
    left alone; one whose remote verification FAILED, or without a good signature where
    `allowed_signers` expects one, never fills a keep slot); the time of a backup is its
    stamp's. Interrupted uploads are not touched here."""
    backups = remote.backups_of(domain)
    now = datetime.now(UTC)
    candidates = []
    problems = {}
    for stamp in backups.complete:
        info = remote.describe(domain, stamp, now)
        if info.manifest is None or info.problem is not None:
            problems[stamp] = info.problem or "unreadable"
            log.warning("%s: %s; left alone by retention", domain, problems[stamp])
            continue
        files = remote.files(domain, stamp)
        candidate = candidate_of(info, files, allowed_signers)
        candidates.append(replace(candidate, time=stamp_time(stamp)))
    decision = (
        Decision(keep=[Kept(c, ("no policy",)) for c in candidates])
        if policy.is_empty()
        else apply_policy(candidates, policy, tz)
    )
    removed = []
    if not dry_run:
        for candidate in decision.remove:
            remote.remove(domain, candidate.name)
            log.info("%s: removed remote backup %s (retention)", domain, candidate.name)
            removed.append(candidate.name)
    unreadable = tuple(problems)
    return PruneResult(
        domain, decision, unreadable, tuple(removed), tuple(backups.incomplete), problems
    )


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
