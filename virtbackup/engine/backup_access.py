"""Open a complete backup for restore and verify, wherever it is and however it is stored.

A backup's files are in a local directory or on an rclone remote (BackupFiles); an
encrypted backup's manifest, domain XML and streams are decrypted through `age` with the
identity file. Streams of a local, unencrypted backup are read at random (parallel
restore); every other stream is read front to back from a pipe.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from virtbackup.adapters import age
from virtbackup.adapters.store import DOMAIN_XML, MANIFEST, record_verification
from virtbackup.core.backup_errors import BackupNotFound, CorruptBackup
from virtbackup.core.backup_names import stream_file_name
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import (
    DiskRecord,
    Manifest,
    ManifestFormatError,
    Sealed,
    VerifyRecord,
    parse_any_manifest,
)

SEALED_MANIFEST = MANIFEST + age.AGE_SUFFIX
SEALED_DOMAIN_XML = DOMAIN_XML + age.AGE_SUFFIX


class BackupFiles(Protocol):
    """The files of one backup directory."""

    label: str  # where it is, for messages

    def read(self, name: str) -> bytes: ...

    def size(self, name: str) -> int | None: ...  # None: missing

    def stream(self, name: str) -> AbstractContextManager[IO[bytes]]: ...

    def local_path(self, name: str) -> Path | None: ...  # None: not on this host

    def record_verification(self, record: VerifyRecord) -> None: ...  # verified.json


class LocalFiles:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            raise missing_file(self.label, name, self.path.is_dir()) from None
        except OSError as err:
            raise CorruptBackup(f"cannot read {self.path / name}: {err.strerror}") from None

    def size(self, name: str) -> int | None:
        try:
            return (self.path / name).stat().st_size
        except FileNotFoundError:
            return None

    @contextmanager
    def stream(self, name: str) -> Iterator[IO[bytes]]:
        try:
            handle = open(self.path / name, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise CorruptBackup(f"stream file {self.path / name} is missing") from None
        with handle:
            yield handle

    def local_path(self, name: str) -> Path | None:
        return self.path / name

    def record_verification(self, record: VerifyRecord) -> None:
        record_verification(self.path, record)


@dataclass(frozen=True)
class OpenedBackup:
    files: BackupFiles
    manifest: Manifest
    sealed: Sealed | None  # the public manifest of an encrypted backup
    identity: Path | None

    @property
    def encrypted(self) -> bool:
        return self.sealed is not None

    def domain_xml(self) -> str:
        if self.sealed is None:
            return self.files.read(DOMAIN_XML).decode(errors="replace")
        assert self.identity is not None
        sealed = self.files.read(SEALED_DOMAIN_XML)
        what = f"{self.files.label}/{SEALED_DOMAIN_XML}"
        return age.decrypt_bytes(self.identity, sealed, what).decode(errors="replace")

    def random_access(self, disk: DiskRecord) -> Path | None:
        """The stream file, when it can be read at random (local and unencrypted)."""
        return None if self.encrypted else self.files.local_path(disk.file)

    @contextmanager
    def disk_stream(self, disk: DiskRecord) -> Iterator[IO[bytes]]:
        """The disk's LZ4 stream, cleartext, read front to back."""
        with self.files.stream(disk.file) as stored:
            if not self.encrypted:
                yield stored
                return
            assert self.identity is not None, "open_backup requires it for an encrypted backup"
            what = f"{self.files.label}/{disk.file}"
            try:
                with age.decrypting(self.identity, stored, what) as clear:
                    yield clear
            except age.WrongIdentity:
                # the same identity opened the manifest: this stream's header is damaged
                raise CorruptBackup(f"{what}: its age header is damaged") from None


def open_backup(files: BackupFiles, identity: Path | None = None) -> OpenedBackup:
    """Read the manifest (decrypting it with `identity` for an encrypted backup)."""
    public = _parse(files.read(MANIFEST), f"{files.label}/{MANIFEST}")
    if isinstance(public, Manifest):
        _check_stream_names(public, False, f"{files.label}/{MANIFEST}")
        return OpenedBackup(files, public, None, identity)
    if identity is None:
        raise UsageError(
            f"backup {files.label} is encrypted",
            "give --identity FILE (an age identity of one of its recipients)",
        )
    what = f"{files.label}/{SEALED_MANIFEST}"
    clear = age.decrypt_bytes(identity, files.read(SEALED_MANIFEST), what)
    manifest = _parse(clear, what)
    if not isinstance(manifest, Manifest) or manifest.domain_name != public.domain_name:
        raise CorruptBackup(f"{what} does not belong to the backup it is in")
    _check_stream_names(manifest, True, what)
    listed = {f.file: f.stored_size for f in public.files}
    for disk in manifest.disks:
        if listed.get(disk.file) != disk.stored_size:
            raise CorruptBackup(f"{what} and {MANIFEST} disagree about {disk.file}")
    return OpenedBackup(files, manifest, public, identity)


def _check_stream_names(manifest: Manifest, encrypted: bool, what: str) -> None:
    """The stream files are named as the writer names them, with `.age` exactly when the
    backup is encrypted (the parser allows either)."""
    for number, disk in enumerate(manifest.disks):
        expected = stream_file_name(disk.target, disk.format, encrypted)
        if disk.file != expected:
            raise CorruptBackup(
                f"manifest {what} is corrupt: disks[{number}].file {disk.file!r} is not {expected}"
            )


def _parse(text: bytes, what: str) -> Manifest | Sealed:
    try:
        return parse_any_manifest(text.decode())
    except UnicodeDecodeError:
        raise CorruptBackup(f"manifest {what} is not UTF-8 text") from None
    except ManifestFormatError as err:
        raise CorruptBackup(f"manifest {what} is corrupt: {err}") from None


def missing_file(label: str, name: str, directory_exists: bool) -> Exception:
    if not directory_exists:
        return BackupNotFound(
            f"backup {label} does not exist", "list backups with 'virtbackup backups'"
        )
    if name == MANIFEST:
        return BackupNotFound(f"{label} is not a backup (it has no {MANIFEST})")
    return CorruptBackup(f"{label}: {name} is missing")
