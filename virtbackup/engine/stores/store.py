"""What every store of backups offers, and what all of them share.

A store keeps complete backups by domain and stamp: DOMAIN/STAMP/ with manifest.json,
domain.xml and one stream per disk (and their signatures, and verified.json once
verified). Each place backups can live is one implementation of `Store`: the local
directory (stores/local.py) and an rclone remote (stores/remote.py). Everything above
it (writing a backup, listing, restore, verify, retention) talks to `Store`, `Partial`
and `BackupFiles` only, so a new kind of store is one more module here.

The rules that are the same everywhere live here once: how a stamp is named and
allocated, how a manifest is read and which errors say it cannot be, when a readable
backup counts as its domain's (core/retention.placement_problem).
"""

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol, Self

from virtbackup.core.backup_errors import BackupNotFound, CorruptBackup, RemoteError, StoreError
from virtbackup.core.errors import UsageError
from virtbackup.core.json_fields import ManifestFormatError
from virtbackup.core.manifest import Manifest, Sealed, parse_any_manifest
from virtbackup.core.retention import placement_problem
from virtbackup.core.signature import MAX_SIGNATURE_SIZE, SIGNATURE_SUFFIX
from virtbackup.core.verify_record import VerifyRecord, parse_verify_record

MANIFEST = "manifest.json"
DOMAIN_XML = "domain.xml"
VERIFIED = "verified.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
# Bounds on what a read of a metadata file takes: far above any manifest, domain XML or
# record we write (a manifest is a few KiB per disk), small enough that a planted giant
# file costs nothing.
METADATA_LIMIT = 16 * 1024 * 1024
RECORD_LIMIT = 64 * 1024
# Backups of one domain started within one second get -2, -3, ... after the stamp.
_SAME_SECOND_LIMIT = 1000

# Hidden working names of ours directly in a store (--skip-free work directories, ...);
# any other name, hidden ones like `.web` included, can be a domain's directory.
RESERVED_PREFIX = ".virtbackup"


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup as `backups` lists it."""

    domain: str
    stamp: str
    path: Path | str  # a directory, or a location on a remote
    manifest: Manifest | Sealed | None  # Sealed: encrypted; None: cannot be read
    problem: str | None  # why it is not a readable backup (no manifest, damaged, ...)
    size: int  # bytes of the backup's files, its verification record not counted
    verified: VerifyRecord | None


class BackupFiles(Protocol):
    """The files of one complete backup, for listing, restore and verify."""

    label: str  # where it is, for messages

    def read(self, name: str) -> bytes: ...  # a metadata file, at most read_limit(name)

    def size(self, name: str) -> int | None: ...  # None: missing

    def stream(self, name: str) -> AbstractContextManager[IO[bytes]]: ...

    def local_path(self, name: str) -> Path | None: ...  # None: not on this host

    def record_verification(self, record: VerifyRecord) -> None: ...  # verified.json


class Partial(Protocol):
    """A backup being written. Used as a context manager: leaving the block without
    commit (an error, Ctrl-C, SIGTERM) drops what was written."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def create(self, name: str) -> AbstractContextManager[IO[bytes]]: ...

    def write_text(self, name: str, text: str) -> None: ...

    def write_bytes(self, name: str, data: bytes) -> None: ...

    def size_of(self, name: str) -> int: ...  # bytes of a file written (once closed)

    def commit(self) -> Path | str: ...  # the complete backup appears at once; where


class Store(Protocol):
    """Where backups live: one implementation per place."""

    label: str  # where it is, for messages and listings

    def list_backups(
        self, domain: str | None = None, now: datetime | None = None
    ) -> list[BackupInfo]:
        """Complete backups (all, or `domain`'s), by domain name, newest first within a
        domain; one that is not a readable backup of its domain is listed with its
        problem (`now`: the time a backup may not be later than)."""
        ...

    def begin(self, domain: str, now: datetime) -> Partial:
        """A new backup of `domain` started at `now`."""
        ...

    def files(self, domain: str, stamp: str) -> BackupFiles:
        """The files of the complete backup `stamp` of `domain`."""
        ...

    def remove(self, domain: str, stamp: str) -> None:
        """Delete one complete backup, never leaving one that looks complete but is not."""
        ...


class AbortUnlessCommitted:
    """The context manager half of a Partial: leaving the block without commit aborts."""

    committed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()

    def abort(self) -> None:
        raise NotImplementedError


def read_limit(name: str) -> int:
    """The most bytes a read of the metadata file `name` takes."""
    if name.endswith(SIGNATURE_SUFFIX):
        return MAX_SIGNATURE_SIZE
    return RECORD_LIMIT if name == VERIFIED else METADATA_LIMIT


def read_manifest(files: BackupFiles, name: str = MANIFEST) -> Manifest | Sealed:
    """The manifest `name` of a backup (the public one by default); BackupNotFound or
    CorruptBackup, with one message wherever the backup is, when it cannot be read."""
    return parse_manifest(files.read(name), f"{files.label}/{name}")


def parse_manifest(text: bytes, what: str) -> Manifest | Sealed:
    """The manifest in `text` (read from `what`, or decrypted from it)."""
    try:
        return parse_any_manifest(text.decode())
    except UnicodeDecodeError:
        raise CorruptBackup(f"manifest {what} is not UTF-8 text") from None
    except ManifestFormatError as err:
        raise CorruptBackup(f"manifest {what} is corrupt: {err}") from None


def describe_backup(
    domain: str, stamp: str, files: BackupFiles, where: Path | str, size: int, now: datetime
) -> BackupInfo:
    """What `backups` shows about one backup; never raises on bad content: a backup that
    is not readable, or not one of its domain's (another domain's, from the future), is
    described with its problem. A signal still ends the listing."""
    manifest: Manifest | Sealed | None = None
    try:
        manifest = read_manifest(files)
    except (BackupNotFound, CorruptBackup, RemoteError) as err:
        problem: str | None = str(err)
    else:
        problem = backup_placement(domain, stamp, manifest, now)
    return BackupInfo(domain, stamp, where, manifest, problem, size, read_verification(files))


def read_verification(files: BackupFiles) -> VerifyRecord | None:
    """The backup's last verification; None: never verified, or a record we cannot read
    (treated as not verified)."""
    try:
        if files.size(VERIFIED) is None:
            return None
        return parse_verify_record(files.read(VERIFIED).decode())
    except (BackupNotFound, CorruptBackup, RemoteError, ManifestFormatError, UnicodeDecodeError):
        return None


def backup_placement(
    domain: str, stamp: str, manifest: Manifest | Sealed, now: datetime
) -> str | None:
    """Why the readable backup `stamp` in the directory of `domain` is not a backup of
    that domain it may count as (core/retention.placement_problem), or None."""
    try:
        times = [stamp_time(stamp), manifest.started]
    except ValueError:
        return f"its name {stamp} is not a valid time"
    return placement_problem(domain, manifest.domain_name, times, now)


def missing_file(label: str, name: str, backup_exists: bool) -> Exception:
    """The error for a file of backup `label` that is not there."""
    if not backup_exists:
        return BackupNotFound(
            f"backup {label} does not exist", "list backups with 'virtbackup backups'"
        )
    if name == MANIFEST:
        return BackupNotFound(f"{label} is not a backup (it has no {MANIFEST})")
    return CorruptBackup(f"{label}: {name} is missing")


def allocate_stamp(domain: str, now: datetime, claim: Callable[[str], bool]) -> str:
    """The stamp of a new backup of `domain` started at `now`: its UTC second, then -2,
    -3, ... for further backups within that second; `claim` takes a stamp for the new
    backup, False when it is taken."""
    base = now.astimezone(UTC).strftime(STAMP_FORMAT)
    for number in range(1, _SAME_SECOND_LIMIT):
        stamp = base if number == 1 else f"{base}-{number}"
        if claim(stamp):
            return stamp
    raise StoreError(f"too many backups of {domain} in the second {base}")


def stamp_time(stamp: str) -> datetime:
    """The UTC time a backup's stamp tells."""
    return datetime.strptime(stamp.split("-")[0], STAMP_FORMAT).replace(tzinfo=UTC)


def is_stamp(name: str) -> bool:
    """Whether `name` is the stamp of a complete backup."""
    return bool(_STAMP.match(name))


def check_stamp(stamp: str) -> None:
    if not is_stamp(stamp):
        raise UsageError(f"{stamp!r} is not a backup stamp like 20250125T183000Z")


def check_backup_name(domain: str, stamp: str) -> None:
    """A backup is named by its domain and stamp: names in the store, never a path out of
    it (UsageError)."""
    check_domain_name(domain)
    check_stamp(stamp)


def check_domain_name(domain: str) -> None:
    """Any libvirt name can name a domain's directory except `.`, `..` and our own hidden
    working names (RESERVED_PREFIX)."""
    if not is_domain_dir_name(domain) or "/" in domain or "\0" in domain:
        raise UsageError(f"domain name {domain!r} cannot be used as a directory name")


def is_domain_dir_name(name: str) -> bool:
    """Whether an entry of a store with this name may be a domain's directory."""
    return name not in ("", ".", "..") and not name.startswith(RESERVED_PREFIX)
