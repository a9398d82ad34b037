"""The deduplicating repository: chunks stored once, backups as lists of chunk names.

Format version 1
================

Layout under DEST (beside the single-stream backups, which stay as they are)::

    DEST/.virtbackup-repository/
        repository.json             what kind of repository this is (below)
        chunks/ab/ab12...ef         one chunk: one LZ4 frame, named by its digest
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

repository.json::

    {"format": "virtbackup-repository", "version": 1, "chunk_size": 4194304,
     "chunk_names": "sha256"}

A repository is untrusted input like any backup: a reader accepts only the names this
module builds (CHUNK_PATH), indexes no longer than their disk needs, and the versions it
knows; anything else is a damaged backup.
"""

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from virtbackup.core.backup_names import is_disk_format, is_disk_target
from virtbackup.core.streamformat import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

REPOSITORY_FORMAT = "virtbackup-repository"
REPOSITORY_VERSION = 1
REPOSITORY_DIR = ".virtbackup-repository"  # starts with the stores' reserved prefix
CONFIG_FILE = "repository.json"
CHUNKS_DIR = "chunks"
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
    version: int = REPOSITORY_VERSION


def build_config(config: RepositoryConfig) -> str:
    document = {
        "format": REPOSITORY_FORMAT,
        "version": config.version,
        "chunk_size": config.chunk_size,
        "chunk_names": config.chunk_names,
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
    if version != REPOSITORY_VERSION:
        raise RepositoryFormatError(
            f"has version {version!r}; this virtbackup reads version {REPOSITORY_VERSION}"
        )
    chunk_size = document.get("chunk_size")
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise RepositoryFormatError(f"has an invalid chunk_size {chunk_size!r}")
    names = document.get("chunk_names")
    if names != CHUNK_NAMES:
        raise RepositoryFormatError(f"names chunks by {names!r}, which this version cannot read")
    return RepositoryConfig(chunk_size=chunk_size, chunk_names=names, version=version)


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
