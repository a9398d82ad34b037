"""Encryption at rest with the stock `age` tool (age-encryption.org/v1).

Backups are encrypted to recipients (public keys, one per line of a recipients file, as
`age -R` reads it), so the backup host never holds a private key; a restore decrypts
with an identity file (`age -d -i`). Keys never pass through argv or logs: argv names
the files only. Streams go through `age` as pipes, so no cleartext copy touches a disk.
"""

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from virtbackup.adapters import runner
from virtbackup.adapters.file_label import file_label
from virtbackup.core.backup_errors import (
    CorruptBackup,
    DestinationFull,
    OutputClosed,
    StoreError,
)
from virtbackup.core.errors import Interrupted, UsageError

AGE_SUFFIX = ".age"
_NO_MATCH = "no identity matched"
_PAYLOAD_CHUNK = 64 << 10  # age seals its payload in chunks of 64 KiB,
_TAG_SIZE = 16  # each with a tag
_HEADER_LIMIT = 64 << 10  # room for the header's stanzas of many recipients


def sealed_size_limit(length: int) -> int:
    """The most bytes `age` can make of `length` bytes: a larger file is not one."""
    return _HEADER_LIMIT + length + (length // _PAYLOAD_CHUNK + 1) * _TAG_SIZE


@dataclass(frozen=True)
class Recipients:
    """Whom backups are encrypted to: the recipients file (what age reads) and its
    public keys."""

    file: Path
    keys: tuple[str, ...]

    def fingerprints(self) -> tuple[str, ...]:
        """What a backup records of its recipients: no key, yet enough to tell which
        identity opens it (`age-keygen -y KEYFILE | tr -d '\\n' | sha256sum`)."""
        return tuple(fingerprint(key) for key in self.keys)


def fingerprint(recipient: str) -> str:
    return "sha256:" + hashlib.sha256(recipient.encode()).hexdigest()[:16]


class WrongIdentity(UsageError):
    """The identity file cannot decrypt the backup (none of its keys is a recipient)."""


def read_recipients(recipients_file: Path) -> Recipients:
    """The recipients of a recipients file, checked by age itself (it must be able to
    encrypt to them); UsageError in one line otherwise."""
    try:
        text = recipients_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read age recipients file {recipients_file}: {reason}") from None
    recipients = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not recipients:
        raise UsageError(
            f"age recipients file {recipients_file} names no recipient",
            "put one public key per line (age-keygen -y KEYFILE prints it)",
        )
    result = runner.run(["age", "-R", str(recipients_file)], input=b"", check=False)
    if result.returncode != 0:
        raise UsageError(f"age cannot encrypt to {recipients_file}: {_last_line(result.stderr)}")
    return Recipients(recipients_file, recipients)


def check_identity(identity_file: Path) -> None:
    if not identity_file.is_file() or not os.access(identity_file, os.R_OK):
        raise UsageError(f"identity file {identity_file} cannot be read")


def encrypt_bytes(recipients_file: Path, data: bytes) -> bytes:
    return runner.run(["age", "-R", str(recipients_file)], input=data).stdout


def decrypt_bytes(identity_file: Path, data: bytes, what: str) -> bytes:
    check_identity(identity_file)
    result = runner.run(["age", "-d", "-i", str(identity_file)], input=data, check=False)
    if result.returncode != 0:
        raise _decrypt_error(result.stderr, identity_file, what)
    return result.stdout


@contextmanager
def encrypting(recipients_file: Path, out: IO[bytes]) -> Iterator[IO[bytes]]:
    """A pipe whose bytes `age` encrypts into the open file `out`. The block's writer
    closes nothing; leaving the block waits for age and raises if it failed."""
    try:
        with _age(["age", "-R", str(recipients_file)], subprocess.PIPE, out) as child:
            assert child.stdin is not None
            try:
                yield child.stdin
            finally:
                child.stdin.close()
    except _AgeFailed as err:
        raise _encrypt_error(err, out) from None


@contextmanager
def decrypting(identity_file: Path, source: IO[bytes], what: str) -> Iterator[IO[bytes]]:
    """The cleartext of the age stream `source` (a file or pipe), as a readable pipe.
    Leaving the block raises WrongIdentity or CorruptBackup if age failed."""
    check_identity(identity_file)
    argv = ["age", "-d", "-i", str(identity_file)]
    try:
        with _age(argv, stdin=source, stdout=subprocess.PIPE) as child:
            assert child.stdout is not None
            yield child.stdout
    except _AgeFailed as err:
        raise _decrypt_error(err.stderr, identity_file, what) from None


class _AgeFailed(Exception):
    def __init__(self, stderr: bytes) -> None:
        super().__init__(_last_line(stderr))
        self.stderr = stderr


@contextmanager
def _age(
    argv: list[str], stdin: int | IO[bytes], stdout: int | IO[bytes]
) -> Iterator["subprocess.Popen[bytes]"]:
    """Run age for the duration of the block: killed when the block fails, waited for
    (and _AgeFailed raised on a non-zero exit) when it ends normally."""
    with tempfile.TemporaryFile() as errors:
        child = runner.spawn(argv, stdin=stdin, stdout=stdout, stderr=errors)
        try:
            yield child
        except BaseException as err:
            if isinstance(err, (BrokenPipeError, OutputClosed)):
                child.wait()  # it closed the pipe: it is exiting, and will say why
            died_first = child.poll() not in (None, 0)
            child.kill()
            child.wait()
            if died_first and isinstance(err, Exception) and not isinstance(err, Interrupted):
                errors.seek(0)  # age's own error explains the broken pipe better
                raise _AgeFailed(errors.read()) from err
            raise
        finally:
            if child.stdout is not None:
                child.stdout.close()
        if child.wait() != 0:
            errors.seek(0)
            raise _AgeFailed(errors.read())


def _encrypt_error(err: _AgeFailed, out: IO[bytes]) -> StoreError:
    name = file_label(out)
    if "no space left" in str(err).lower():
        return DestinationFull(
            f"no space left on the backup destination while writing {name}",
            "free space there or choose another --dest",
        )
    return StoreError(f"cannot encrypt {name}: age failed ({err})")


def _decrypt_error(stderr: bytes, identity_file: Path, what: str) -> Exception:
    message = _last_line(stderr)
    if _NO_MATCH in message:
        return WrongIdentity(
            f"{what}: no key in identity file {identity_file} can decrypt it",
            "give the identity file whose public key the backup was encrypted to",
        )
    return CorruptBackup(f"{what}: age cannot decrypt it ({message})")


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    # age ends every error with a line asking for bug reports: the error is before it
    meaningful = [line for line in lines if "report unexpected" not in line]
    text = (meaningful or lines or ["age failed"])[-1].strip()
    return text.removeprefix("age: error: ").removeprefix("age: ")
