"""Open a complete backup for restore and verify, wherever it is and however it is stored.

A backup's files come from any store (store.BackupFiles); an encrypted backup's
manifest, domain XML and streams are decrypted through `age` with the identity file.
Streams of a local, unencrypted backup are read at random (parallel restore); every
other stream is read front to back from a pipe.
"""

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from virtbackup.adapters import age, ssh_sign
from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.backup_names import stream_file_name
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import DiskRecord, Manifest, Sealed
from virtbackup.core.repository_format import index_file_name
from virtbackup.core.signature import (
    MAX_SIGNATURE_SIZE,
    SignatureCheck,
    SignatureState,
    require_trusted,
    signature_name,
    signed_names,
)
from virtbackup.core.verify_record import VerifyRecord
from virtbackup.engine.stores.store import (
    DOMAIN_XML,
    MANIFEST,
    BackupFiles,
    parse_manifest,
    read_manifest,
)

SEALED_MANIFEST = MANIFEST + age.AGE_SUFFIX
SEALED_DOMAIN_XML = DOMAIN_XML + age.AGE_SUFFIX


class ReadOnce:
    """The files of a backup, each metadata file read from `files` once and kept: what
    the signature check saw is what is parsed, decrypted and restored, however often it
    is asked for (a remote, or whoever can write the directory, could serve different
    bytes to a second read)."""

    def __init__(self, files: BackupFiles) -> None:
        self.files = files
        self.label = files.label
        self._read: dict[str, bytes] = {}

    def read(self, name: str) -> bytes:
        if name not in self._read:
            self._read[name] = self.files.read(name)
        return self._read[name]

    def size(self, name: str) -> int | None:
        if name in self._read:
            return len(self._read[name])
        return self.files.size(name)

    def stream(self, name: str) -> AbstractContextManager[IO[bytes]]:
        return self.files.stream(name)  # disk streams: checked against the manifest's digest

    def local_path(self, name: str) -> Path | None:
        return self.files.local_path(name)

    def record_verification(self, record: VerifyRecord) -> None:
        self.files.record_verification(record)


@dataclass(frozen=True)
class Trust:
    """Whose signatures a read accepts: with `allowed_signers` set, a backup must be
    signed by one of them (an unsigned one only with `allow_unsigned`)."""

    allowed_signers: Path | None = None
    allow_unsigned: bool = False


NO_SIGNERS = Trust()  # signatures are shown, not required


@dataclass(frozen=True)
class OpenedBackup:
    files: BackupFiles
    manifest: Manifest
    sealed: Sealed | None  # the public manifest of an encrypted backup
    identity: Path | None
    signature: SignatureCheck = SignatureCheck(SignatureState.UNSIGNED)

    @property
    def encrypted(self) -> bool:
        return self.sealed is not None

    def domain_xml(self) -> str:
        """The domain XML the backup holds; CorruptBackup when it is not the one its
        manifest records (e.g. the domain.xml of another backup copied in)."""
        if self.sealed is None:
            what = f"{self.files.label}/{DOMAIN_XML}"
            xml = self.files.read(DOMAIN_XML)
        else:
            assert self.identity is not None
            what = f"{self.files.label}/{SEALED_DOMAIN_XML}"
            xml = age.decrypt_bytes(self.identity, self.files.read(SEALED_DOMAIN_XML), what)
        expected = self.manifest.domain_xml_sha256
        if expected is not None and hashlib.sha256(xml).hexdigest() != expected:
            raise CorruptBackup(
                f"{what} is not the domain XML its manifest records (replaced or damaged)"
            )
        return xml.decode(errors="replace")

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


def open_backup(
    files: BackupFiles, identity: Path | None = None, trust: Trust = NO_SIGNERS
) -> OpenedBackup:
    """Check the signatures against `trust`, then read the manifest (decrypting it with
    `identity` for an encrypted backup). BadSignature or UnsignedBackup when it may not
    be used. Each metadata file is read once: the bytes checked are the bytes used."""
    if not isinstance(files, ReadOnce):
        files = ReadOnce(files)
    public = read_manifest(files)
    signature = check_signatures(files, trust.allowed_signers)
    expected = trust.allowed_signers is not None
    require_trusted(signature, files.label, expected, trust.allow_unsigned)
    if isinstance(public, Manifest):
        _check_stream_names(public, False, f"{files.label}/{MANIFEST}")
        return OpenedBackup(files, public, None, identity, signature)
    if identity is None:
        raise UsageError(
            f"backup {files.label} is encrypted",
            "give --identity FILE (an age identity of one of its recipients: "
            f"{', '.join(public.recipients)})",
        )
    what = f"{files.label}/{SEALED_MANIFEST}"
    try:
        clear = age.decrypt_bytes(identity, files.read(SEALED_MANIFEST), what)
    except age.WrongIdentity as err:
        raise age.WrongIdentity(
            err.message,
            f"give the age identity of one of its recipients: {', '.join(public.recipients)}",
        ) from None
    manifest = parse_manifest(clear, what)
    if not isinstance(manifest, Manifest) or manifest.domain_name != public.domain_name:
        raise CorruptBackup(f"{what} does not belong to the backup it is in")
    _check_stream_names(manifest, True, what)
    listed = {f.file: f.stored_size for f in public.files}
    for disk in manifest.disks:
        if listed.get(disk.file) != disk.stored_size:
            raise CorruptBackup(f"{what} and {MANIFEST} disagree about {disk.file}")
    return OpenedBackup(files, manifest, public, identity, signature)


def check_signatures(files: BackupFiles, allowed_signers: Path | None) -> SignatureCheck:
    """What the signatures of a backup say (see core/signature.py): every metadata file
    must be signed, all by one principal of `allowed_signers`."""
    names = signed_names(encrypted=files.size(SEALED_MANIFEST) is not None)
    signed = [name for name in names if files.size(signature_name(name)) is not None]
    if not signed:
        return SignatureCheck(SignatureState.UNSIGNED)
    unsigned = [name for name in names if name not in signed]
    if unsigned:
        problem = f"{unsigned[0]} has no signature, though {signed[0]} has one"
        return SignatureCheck(SignatureState.BAD, problem=problem)
    if allowed_signers is None:
        return SignatureCheck(SignatureState.UNCHECKED)
    ssh_sign.check_allowed_signers(allowed_signers)
    principals = set()
    for name in names:
        if files.size(name) is None:
            return SignatureCheck(SignatureState.BAD, problem=f"{name} is missing")
        if (files.size(signature_name(name)) or 0) > MAX_SIGNATURE_SIZE:
            problem = f"{signature_name(name)} is too large to be a signature"
            return SignatureCheck(SignatureState.BAD, problem=problem)
        signature = files.read(signature_name(name))
        if len(signature) > MAX_SIGNATURE_SIZE:
            problem = f"{signature_name(name)} is too large to be a signature"
            return SignatureCheck(SignatureState.BAD, problem=problem)
        principal = ssh_sign.signer_of(allowed_signers, files.read(name), signature)
        if principal is None:
            problem = (
                f"{name} does not match {signature_name(name)}, or no key of "
                f"{allowed_signers} made it"
            )
            return SignatureCheck(SignatureState.BAD, problem=problem)
        principals.add(principal)
    if len(principals) > 1:
        problem = f"its files are signed by different principals ({', '.join(sorted(principals))})"
        return SignatureCheck(SignatureState.BAD, problem=problem)
    return SignatureCheck(SignatureState.SIGNED, principal=principals.pop())


def _check_stream_names(manifest: Manifest, encrypted: bool, what: str) -> None:
    """The stream files are named as the writer names them, with `.age` exactly when the
    backup is encrypted (the parser allows either)."""
    for number, disk in enumerate(manifest.disks):
        expected = stream_file_name(disk.target, disk.format, encrypted)
        if disk.in_repository:
            expected = index_file_name(disk.target, disk.format)
        if disk.file != expected:
            raise CorruptBackup(
                f"manifest {what} is corrupt: disks[{number}].file {disk.file!r} is not {expected}"
            )
