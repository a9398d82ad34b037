"""The secret that names the chunks of encrypted backups (see core/repository_format.py).

The first encrypted backup written to a repository makes it: 32 random bytes, kept on
this host in the state directory (repository-secrets/<secret id>, 0600, the raw bytes)
and in the repository encrypted to the backup's recipients (secrets/<recipients id>.age).
A backup reads the host's copy (a backup host holds no identity); a restore decrypts the
repository's copy with the identity, so a new host needs nothing else.

Recipients changed: the next backup finds no secret encrypted to the new set and writes
one from the host's copy; the files for earlier sets stay, so the identities of the
backups made for them still open them. A host without the copy (a second backup host,
or a state directory lost) cannot write encrypted backups to that repository: the error
says how to put the secret in place (age -d of the repository's copy), since a second
secret would split the chunks into two sets that never deduplicate.
"""

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from virtbackup.adapters import age
from virtbackup.adapters.atomic_file import write_atomically
from virtbackup.adapters.journal import ensure_state_subdir, open_private_file
from virtbackup.core.backup_errors import CorruptBackup, StoreError, write_error
from virtbackup.core.errors import UsageError
from virtbackup.core.repository_format import (
    SECRET_LOCK_FILE,
    SECRET_SIZE,
    SECRETS_DIR,
    secret_file,
    secret_id,
)
from virtbackup.engine.stores.chunk_store import ChunkStore

HOST_SECRETS_DIR = "repository-secrets"


def writer_secret(chunks: ChunkStore, state_dir: Path, recipients: age.Recipients) -> bytes:
    """The repository's secret for a backup encrypted to `recipients`: made on first use,
    else this host's copy; the repository gets a copy encrypted to `recipients` if it has
    none yet."""
    host_dir = ensure_state_subdir(state_dir / HOST_SECRETS_DIR)
    if chunks.config.secret_id is None:
        with _making_secret(chunks):
            return _make_secret(chunks, host_dir, recipients)
    return _host_secret(chunks, host_dir, recipients)


@contextmanager
def _making_secret(chunks: ChunkStore) -> Iterator[None]:
    """Held while a secret is made, so that two first encrypted backups (in two
    processes, or on two hosts where the filesystem's locks reach) make one secret."""
    fd = chunks.open_lock_file(SECRET_LOCK_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_secret(chunks: ChunkStore, host_dir: Path, recipients: age.Recipients) -> bytes:
    """A new secret, unless another backup made one while this one waited for it. A
    secrets file left by a creation that was killed is replaced (it named no chunk)."""
    chunks.reload_config()
    config = chunks.config
    if config.secret_id is None:
        secret = secrets.token_bytes(SECRET_SIZE)
        identifier = secret_id(secret)
        try:
            write_atomically(host_dir / identifier, secret)  # kept before anything uses it
        except OSError as err:
            raise write_error(err, host_dir / identifier) from None
        _store_encrypted(chunks, recipients, secret)
        chunks.update_config(replace(config, secret_id=identifier))
        return secret
    return _host_secret(chunks, host_dir, recipients)


def _host_secret(chunks: ChunkStore, host_dir: Path, recipients: age.Recipients) -> bytes:
    config = chunks.config
    assert config.secret_id is not None
    secret = _read_host_copy(chunks, host_dir / config.secret_id)
    if not (chunks.root / secret_file(recipients.fingerprints())).is_file():
        _store_encrypted(chunks, recipients, secret)
    return secret


def reader_secret(chunks: ChunkStore, identity: Path, fingerprints: tuple[str, ...]) -> bytes:
    """The secret, decrypted with `identity` from the repository's copy for the
    recipients `fingerprints` (those of the backup being read)."""
    return open_secret_file(chunks, identity, chunks.root / secret_file(fingerprints))


def open_secret_file(chunks: ChunkStore, identity: Path, path: Path) -> bytes:
    """The secret in the repository's copy `path`, decrypted with `identity`;
    WrongIdentity when it is not one of that copy's recipients."""
    try:
        sealed = path.read_bytes()
    except OSError as err:
        raise CorruptBackup(
            f"the repository secret {path} cannot be read ({err.strerror}): its encrypted "
            "chunks cannot be named"
        ) from None
    secret = age.decrypt_bytes(identity, sealed, str(path))
    if len(secret) != SECRET_SIZE or secret_id(secret) != chunks.config.secret_id:
        raise CorruptBackup(f"{path} is not the secret of its repository (replaced or damaged)")
    return secret


def _store_encrypted(chunks: ChunkStore, recipients: age.Recipients, secret: bytes) -> None:
    name = Path(secret_file(recipients.fingerprints())).name
    sealed = age.encrypt_bytes(recipients.file, secret)
    chunks.write_file(chunks.root / SECRETS_DIR, name, sealed)


def _read_host_copy(chunks: ChunkStore, path: Path) -> bytes:
    try:
        fd = open_private_file(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UsageError(
            f"the encrypted chunks of {chunks.root} are named with a secret this host does "
            f"not hold ({path} is missing)",
            f"decrypt the repository's copy once: age -d -i IDENTITY {chunks.root}/"
            f"{SECRETS_DIR}/<one of them>.age > {path}; chmod 600 {path}",
        ) from None
    except OSError as err:
        raise StoreError(f"cannot read the repository secret {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as copy:
        secret = copy.read(SECRET_SIZE + 1)
    if len(secret) != SECRET_SIZE or secret_id(secret) != chunks.config.secret_id:
        raise StoreError(f"{path} is not the secret of {chunks.root} (replaced or damaged)")
    return secret
