"""The deduplicating repository: chunks stored once, backups as lists of chunk names.

Format version 2 (version 1: the same without encrypted chunks)
==============================================================

Layout under DEST (beside the single-stream backups, which stay as they are)::

    DEST/.virtbackup-repository/
        repository.json             what kind of repository this is (below)
        chunks/ab/ab12...ef         one chunk: one LZ4 frame, named by its digest
        sealed-chunks/ab/ab12...ef  one chunk of the encrypted backups (below)
        secrets/<recipients>.age    the secret naming them, encrypted to the recipients
        secret.lock                 flock'ed while the first encrypted backup makes it
        writers/<id>                one per backup writing into it (see engine/stores/gc)
        gc.lock                     flock'ed by the garbage collection of this host
        chunks/ab/.gc-ab12...ef     a chunk garbage collection is about to remove
    DEST/<domain>/<stamp>/
        manifest.json, domain.xml   as for a stream backup (core/manifest.py)
        vda.raw.idx                 the disk's index: one chunk path per line

Chunks
    The disk is cut on the grid of the repository's ``chunk_size`` (4 MiB); the last
    chunk may be shorter. A chunk is exactly the LZ4 frame the stream format makes for that
    range (engine/datapath/frames.py): independent, no checksums, so the concatenation of a
    disk's chunks in index order is a valid LZ4 stream of the whole disk. Its name is the
    sha256 of its uncompressed bytes in lower-case hex, and it lives in the directory
    named by the first two hex digits. The all-zero chunk is a chunk like any other: one
    file for each length, written once; restore makes it a hole instead of reading it.
    A chunk is written to a temporary name in its directory, fsynced and renamed, so a
    name that exists always holds the whole chunk.

Index ``<target>.<format>.idx``
    ASCII text, one line per chunk of the grid in disk order: ``ab/ab12...ef`` (the
    path below ``chunks/``) and a newline. Nothing else, so stock tools restore a disk::

        sed "s|^|DEST/.virtbackup-repository/chunks/|" vda.raw.idx | xargs cat | lz4 -d > vda.raw

    The manifest records the index's sha256 (`index_sha256`), the disk's byte size and the
    chunk size, so an index is bound to its backup and every chunk's length is known.

Encrypted backups (``--encrypt``)
    Their chunks live in ``sealed-chunks/``, a chunk directory of their own beside the
    plain ``chunks/``; a DEST holds both kinds of backup side by side. Such a chunk is the
    LZ4 frame above encrypted with age to the backup's recipients, and its name is
    HMAC-SHA256(key, sha256(uncompressed bytes)) in hex, where the key is
    `chunk_key` of the repository secret and the recipients: without the secret neither
    names nor contents reveal the data, and equal chunks still share one name among the
    backups made with one secret for one set of recipients. (A chunk is encrypted to
    the recipients of the backup that wrote it; were names shared across recipients, a
    backup for new recipients would reuse chunks its identity cannot open. A change of
    recipients therefore starts new chunks; the old ones go with the old backups.)
    The secret is 32 random bytes made by the first encrypted backup. The repository
    holds it encrypted to the recipients, as ``secrets/<id>.age`` where <id> is
    `recipients_id` of the recipients' fingerprints (one file per set of recipients
    that has written backups, so an old identity still opens the backups made for it);
    `secret_id` of the secret is in repository.json, to tell a copy of it from another
    secret. The index of an encrypted backup has the same form, its paths below
    ``sealed-chunks/``, and it is bound to its backup by ``index_sha256`` in the
    encrypted manifest. Stock tools restore a disk with the identity alone::

        sed "s|^|DEST/.virtbackup-repository/sealed-chunks/|" vda.raw.idx \\
            | xargs -n 1 age -d -i KEYFILE | lz4 -d > vda.raw

    The whole-disk digest of such a disk is folded from the keyed names (so that it,
    too, is computable from the index, and says nothing without the secret).

repository.json::

    {"format": "virtbackup-repository", "version": 2, "chunk_size": 4194304,
     "chunk_names": "sha256",
     "sealed_chunks": {"chunk_names": "hmac-sha256", "secret_id": "<64 hex>"}}

``sealed_chunks`` (and version 2) appear once the first encrypted backup is written; a
repository without it is written as version 1, which older readers know.

A repository is untrusted input like any backup: a reader accepts only the names this
module builds (CHUNK_PATH), indexes no longer than their disk needs, and the versions it
knows; anything else is a damaged backup.
"""

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from virtbackup.core.backup_names import is_disk_format, is_disk_target
from virtbackup.core.streamformat import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

REPOSITORY_FORMAT = "virtbackup-repository"
REPOSITORY_VERSION = 2
PLAIN_VERSION = 1  # a repository without encrypted chunks
REPOSITORY_DIR = ".virtbackup-repository"  # starts with the stores' reserved prefix
CONFIG_FILE = "repository.json"
CHUNKS_DIR = "chunks"
SEALED_CHUNKS_DIR = "sealed-chunks"
SECRETS_DIR = "secrets"
SECRET_LOCK_FILE = "secret.lock"
SECRET_SIZE = 32
SEALED_CHUNK_NAMES = "hmac-sha256"
WRITERS_DIR = "writers"
GC_LOCK_FILE = "gc.lock"
GC_HIDDEN_PREFIX = ".gc-"  # a chunk renamed out of sight by garbage collection
INDEX_SUFFIX = ".idx"
CHUNK_NAMES = "sha256"
CONFIG_LIMIT = 64 * 1024

LINE_SIZE = 2 + 1 + 64 + 1  # "ab/" + 64 hex + newline
CHUNK_PATH = re.compile(r"([0-9a-f]{2})/(\1[0-9a-f]{62})")
_CHUNK_NAME = re.compile(r"[0-9a-f]{64}")


class RepositoryFormatError(ValueError):
    """The text is not a repository file this version can read."""


@dataclass(frozen=True)
class RepositoryConfig:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_names: str = CHUNK_NAMES
    secret_id: str | None = None  # set once encrypted backups have chunks here

    @property
    def version(self) -> int:
        return PLAIN_VERSION if self.secret_id is None else REPOSITORY_VERSION


def build_config(config: RepositoryConfig) -> str:
    document: dict[str, object] = {
        "format": REPOSITORY_FORMAT,
        "version": config.version,
        "chunk_size": config.chunk_size,
        "chunk_names": config.chunk_names,
    }
    if config.secret_id is not None:
        document["sealed_chunks"] = {
            "chunk_names": SEALED_CHUNK_NAMES,
            "secret_id": config.secret_id,
        }
    return json.dumps(document, indent=2) + "\n"


def parse_config(text: str) -> RepositoryConfig:
    try:
        document = json.loads(text)
    except ValueError as err:
        raise RepositoryFormatError(f"is not JSON: {err}") from None
    except RecursionError:  # arrays nested deeper than the parser goes
        raise RepositoryFormatError("is not JSON this virtbackup can read") from None
    if not isinstance(document, dict) or document.get("format") != REPOSITORY_FORMAT:
        raise RepositoryFormatError(f"is not a {REPOSITORY_FORMAT} description")
    version = document.get("version")
    if version not in (PLAIN_VERSION, REPOSITORY_VERSION):
        raise RepositoryFormatError(
            f"has version {version!r}; this virtbackup reads version {REPOSITORY_VERSION}"
        )
    chunk_size = document.get("chunk_size")
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise RepositoryFormatError(f"has an invalid chunk_size {chunk_size!r}")
    names = document.get("chunk_names")
    if names != CHUNK_NAMES:
        raise RepositoryFormatError(f"names chunks by {names!r}, which this version cannot read")
    secret = _parse_sealed(document.get("sealed_chunks")) if version > PLAIN_VERSION else None
    return RepositoryConfig(chunk_size=chunk_size, chunk_names=names, secret_id=secret)


def _parse_sealed(section: object) -> str:
    """The secret id of the encrypted chunks' description."""
    if not isinstance(section, dict) or section.get("chunk_names") != SEALED_CHUNK_NAMES:
        raise RepositoryFormatError("does not describe its encrypted chunks")
    secret = section.get("secret_id")
    if not isinstance(secret, str) or not is_chunk_name(secret):
        raise RepositoryFormatError(f"has an invalid secret_id {secret!r}")
    return secret


def keyed_name(key: bytes, digest: bytes) -> str:
    """The name of an encrypted chunk whose uncompressed bytes have the sha256 `digest`."""
    return hmac.new(key, digest, hashlib.sha256).hexdigest()


def chunk_key(secret: bytes, recipients: str) -> bytes:
    """The key naming the chunks encrypted to the recipients of `recipients_id`."""
    label = f"virtbackup chunks for {recipients}".encode()
    return hmac.new(secret, label, hashlib.sha256).digest()


def secret_id(secret: bytes) -> str:
    """What the repository records of its secret: tells one secret from another and
    nothing about it (a keyed digest no chunk can have: chunk digests are 32 bytes)."""
    return hmac.new(secret, b"virtbackup repository secret", hashlib.sha256).hexdigest()


def recipients_id(fingerprints: tuple[str, ...]) -> str:
    """The name, below secrets/, of the secret encrypted to these recipients."""
    joined = "\n".join(sorted(set(fingerprints)))
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


def secret_file(fingerprints: tuple[str, ...]) -> str:
    return f"{SECRETS_DIR}/{recipients_id(fingerprints)}.age"


@dataclass(frozen=True)
class ChunkNames:
    """How chunks are named: by their sha256 (`key` None) or by the keyed digest of it
    (`chunk_key`)."""

    key: bytes | None = None

    def of_digest(self, digest: bytes) -> str:
        return chunk_name(digest) if self.key is None else keyed_name(self.key, digest)

    def of_data(self, data: bytes | bytearray | memoryview) -> str:
        return self.of_digest(hashlib.sha256(data).digest())

    def zero(self, length: int) -> str:
        """The name of the chunk of `length` zero bytes."""
        plain = zero_chunk_name(length)
        return plain if self.key is None else keyed_name(self.key, bytes.fromhex(plain))


def chunk_name(digest: bytes) -> str:
    """The name of the chunk whose uncompressed bytes have this sha256."""
    return digest.hex()


def chunk_path(name: str) -> str:
    """The chunk's path below chunks/, as an index line holds it."""
    return f"{name[:2]}/{name}"


def is_chunk_name(name: str) -> bool:
    return _CHUNK_NAME.fullmatch(name) is not None


@lru_cache(maxsize=8)
def zero_chunk_name(length: int) -> str:
    """The name of the chunk of `length` zero bytes."""
    return chunk_name(hashlib.sha256(bytes(length)).digest())


def index_file_name(target: str, fmt: str) -> str:
    return f"{target}.{fmt}{INDEX_SUFFIX}"


def is_index_file_name(name: str) -> bool:
    if not name.endswith(INDEX_SUFFIX):
        return False
    target, _, fmt = name[: -len(INDEX_SUFFIX)].partition(".")
    return is_disk_target(target) and is_disk_format(fmt)


def chunk_count(byte_size: int, chunk_size: int) -> int:
    """How many chunks a disk of `byte_size` bytes has on the grid."""
    return -(-byte_size // chunk_size)


def chunk_lengths(byte_size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of every chunk of the grid, in order."""
    for offset in range(0, byte_size, chunk_size):
        yield offset, min(chunk_size, byte_size - offset)


def index_line(name: str) -> bytes:
    return (chunk_path(name) + "\n").encode("ascii")


def index_size(byte_size: int, chunk_size: int) -> int:
    """Bytes of the index of a disk of `byte_size` bytes."""
    return chunk_count(byte_size, chunk_size) * LINE_SIZE


def parse_index_line(line: bytes, number: int) -> str:
    """The chunk name on line `number` (from 0) of an index; RepositoryFormatError if the
    line is not one this module writes."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise RepositoryFormatError(f"line {number + 1} is not ASCII") from None
    match = CHUNK_PATH.fullmatch(text.removesuffix("\n")) if text.endswith("\n") else None
    if match is None:
        raise RepositoryFormatError(f"line {number + 1} is not a chunk path")
    return match.group(2)


def parse_index(data: bytes, byte_size: int, chunk_size: int) -> list[str]:
    """The chunk names of an index of a disk of `byte_size` bytes, in order."""
    expected = chunk_count(byte_size, chunk_size)
    if len(data) != expected * LINE_SIZE:
        raise RepositoryFormatError(
            f"has {len(data)} bytes; a disk of {byte_size} bytes has {expected} chunks "
            f"of {LINE_SIZE} bytes each"
        )
    return parse_index_block(data, 0)


def parse_index_block(data: bytes, first_line: int) -> list[str]:
    """The chunk names of whole index lines `data`, the first of them line `first_line`
    (from 0): an index read piece by piece, so that a 1 TiB disk's needs no 18 MB read."""
    if len(data) % LINE_SIZE:
        raise RepositoryFormatError(f"line {first_line + len(data) // LINE_SIZE + 1} is cut")
    return [
        parse_index_line(data[start : start + LINE_SIZE], first_line + number)
        for number, start in enumerate(range(0, len(data), LINE_SIZE))
    ]


PLAIN_NAMES = ChunkNames()  # the chunks of unencrypted backups: named by their sha256
