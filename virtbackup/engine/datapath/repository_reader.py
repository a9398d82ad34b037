"""Read a disk of a backup in the repository layout: its index, restore and verify.

The index (core/repository_format.py) is untrusted input: it is bound to its backup by
the manifest's `index_sha256`, must have exactly one line per chunk of the disk and
names nothing but chunk paths. Its chunks become the frames of an ordinary StreamIndex,
restored and verified by the same machinery as a stream file (stream_reader.py); only
where the frames come from differs (ChunkFrames). A zero chunk becomes a hole and is
never read on restore; verify checks each zero chunk once.

An encrypted backup's chunks are in the encrypted chunk directory: the identity opens the
repository secret (engine/stores/repository_secret.py), each chunk is decrypted with age
as it is read, and a frame's data is checked against its keyed name.
"""

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import age
from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.manifest import DiskRecord
from virtbackup.core.progress import ProgressSink
from virtbackup.core.repository_format import (
    PLAIN_NAMES,
    ChunkNames,
    RepositoryFormatError,
    chunk_key,
    index_size,
    parse_index,
    recipients_id,
)
from virtbackup.core.streamformat import (
    FRAME_DIGEST,
    STREAM_FORMAT_VERSION,
    FrameEntry,
    IndexHeader,
)
from virtbackup.engine.datapath.chunk_prefetch import ChunkPrefetch, chunks_ahead
from virtbackup.engine.datapath.frames import Buffer, FrameError, decode_frame, max_frame_size
from virtbackup.engine.datapath.io_control import NotRegularFile, read_regular_file
from virtbackup.engine.datapath.stream_reader import StreamIndex, verify_frames
from virtbackup.engine.stores.backup_access import OpenedBackup
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.repository_secret import reader_secret


@dataclass(frozen=True)
class RepositoryDisk:
    """A disk of a repository backup, its index checked: frames to restore or verify."""

    index: StreamIndex
    frames: "ChunkFrames"


def repository_disk(opened: OpenedBackup, disk: DiskRecord) -> RepositoryDisk:
    """The checked index of a disk in the repository of the backup's DEST."""
    path = opened.files.local_path(disk.file)
    if path is None:
        raise CorruptBackup(
            f"{disk.target}: {opened.files.label} keeps its disks in a repository, "
            "which can only be read where it is"
        )
    if opened.sealed is None:
        return open_repository_disk(path, disk, opened.files.label)
    assert opened.identity is not None, "open_backup requires it for an encrypted backup"
    store = ChunkStore(_dest_of(path), sealed=True)
    recipients = opened.sealed.recipients
    key = chunk_key(reader_secret(store, opened.identity, recipients), recipients_id(recipients))
    return open_repository_disk(path, disk, opened.files.label, store, key, opened.identity)


def verify_repository_disk(
    opened: OpenedBackup, disk: DiskRecord, progress: ProgressSink, workers: int = 0
) -> None:
    """Check a disk of a repository backup: its index, that every chunk exists, decodes
    and has the digest its name says, and the whole-disk digest of its manifest.
    CorruptBackup names the disk, the chunk and the backup."""
    checked = repository_disk(opened, disk)
    checked.frames.check_zero_chunks(checked.index, disk.target)
    with checked.frames.reading(checked.index.entries):
        digest = verify_frames(checked.index, checked.frames, disk.target, progress, workers)
    if digest != disk.digest:
        raise CorruptBackup(
            f"{disk.target}: the data's {disk.digest_algorithm} in {opened.files.label} is "
            f"{digest}, the manifest records {disk.digest}"
        )


def _dest_of(index_path: Path) -> Path:
    return index_path.parent.parent.parent  # DEST/<domain>/<stamp>/<index>


def open_repository_disk(
    index_path: Path,
    disk: DiskRecord,
    backup: str,
    store: ChunkStore | None = None,
    key: bytes | None = None,
    identity: Path | None = None,
) -> RepositoryDisk:
    """The checked index of `disk`, whose index file is `index_path` in the backup
    directory DEST/<domain>/<stamp>/ (named `backup` in messages); CorruptBackup names
    the disk and the backup when it cannot be used. An encrypted backup's disk gives its
    chunk store, the key naming its chunks and the identity that decrypts them."""
    store = store or ChunkStore(_dest_of(index_path))
    naming = ChunkNames(key)
    what = f"{disk.target}: {disk.file} of {backup}"
    data = _read_index_file(index_path, index_size(disk.byte_size, disk.chunk_size), what)
    if hashlib.sha256(data).hexdigest() != disk.index_sha256:
        raise CorruptBackup(f"{what} is not the index its manifest records (replaced or damaged)")
    try:
        names = parse_index(data, disk.byte_size, disk.chunk_size)
    except RepositoryFormatError as err:
        raise CorruptBackup(f"{what} {err}") from None
    entries = []
    for number, name in enumerate(names):
        offset = number * disk.chunk_size
        length = min(disk.chunk_size, disk.byte_size - offset)
        is_zero = name == naming.zero(length)
        entries.append(FrameEntry(0, 0, offset, length, is_zero, bytes.fromhex(name)))
    header = IndexHeader(
        version=STREAM_FORMAT_VERSION,
        chunk_size=disk.chunk_size,
        data_size=disk.byte_size,
        frame_count=len(entries),
        frame_digest=FRAME_DIGEST,
        whole_digest_name=disk.digest_algorithm,
        whole_digest=bytes.fromhex(disk.digest),
    )
    index = StreamIndex(index_path, header, entries, len(data))
    frames = ChunkFrames(store, disk.chunk_size, backup, naming, identity)
    return RepositoryDisk(index, frames)


class ChunkFrames:
    """The frames of a repository index: each one chunk file of the repository (of an
    encrypted one, decrypted with `identity`). Inside `reading`, the chunk files are
    read ahead of the frames asked for (chunk_prefetch.py)."""

    def __init__(
        self,
        store: ChunkStore,
        chunk_size: int,
        backup: str,
        names: ChunkNames = PLAIN_NAMES,
        identity: Path | None = None,
    ) -> None:
        self.store = store
        self.backup = backup
        self.names = names
        self.identity = identity
        self._limit = max_frame_size(chunk_size)
        if identity is not None:
            self._limit = age.sealed_size_limit(self._limit)
        self._ahead = chunks_ahead(chunk_size)
        self._prefetch: ChunkPrefetch | None = None

    @contextmanager
    def reading(self, entries: Sequence[FrameEntry]) -> Iterator[None]:
        """While the block reads the frames of `entries` in about this order, their
        chunk files are read ahead (a bounded number of them)."""
        with ChunkPrefetch(entries, self.store.path, self._ahead) as prefetch:
            self._prefetch = prefetch
            try:
                yield
            finally:
                self._prefetch = None

    def read(self, entry: FrameEntry) -> bytes | None:
        if entry.is_zero:
            return None  # a hole: its chunk is checked once by check_zero_chunks
        return self.stored_frame(entry)

    def stored_frame(self, entry: FrameEntry) -> bytes:
        """The stored frame of `entry`. A data chunk's file leaves the page cache once
        read; the zero chunk's stays (it recurs, and is never hinted)."""
        if entry.is_zero:
            return self.chunk(entry.digest.hex())
        try:
            return self.chunk(entry.digest.hex(), uncache=True)
        finally:
            if self._prefetch is not None:
                self._prefetch.taken()

    def where(self, entry: FrameEntry) -> str:
        return f"chunk {entry.digest.hex()} of backup {self.backup}"

    def digest(self, data: Buffer) -> bytes:
        return bytes.fromhex(self.names.of_data(data))

    def frame_digest(self, entry: FrameEntry, frame: bytes) -> bytes:
        """The sha256 of the data of `entry`'s frame (the frame digest of a stream):
        its name, or for an encrypted chunk, decoded and checked against its keyed name."""
        if self.names.key is None:
            return entry.digest
        data = decode_frame(frame, entry.data_length)
        digest = hashlib.sha256(data).digest()
        if self.names.of_digest(digest) != entry.digest.hex():
            raise FrameError("does not match its name")
        return digest

    def chunk(self, name: str, uncache: bool = False) -> bytes:
        """The chunk's frame (decrypted for an encrypted backup); FrameError if it
        cannot be had. `uncache`: its file leaves the page cache once read."""
        try:
            stored = self.store.read(name, self._limit, uncache)
        except CorruptBackup as err:
            if not os.path.lexists(self.store.path(name)):
                raise FrameError(f"is missing from {self.store.chunks}") from None
            raise FrameError(f"cannot be read: {err.message}") from None
        if self.identity is None:
            return stored
        try:
            return age.decrypt_bytes(self.identity, stored, f"chunk {name}")
        except (age.WrongIdentity, CorruptBackup):
            # the same identity opened the repository secret: this chunk is damaged
            raise FrameError("cannot be decrypted (damaged)") from None

    def check_zero_chunks(self, index: StreamIndex, label: str) -> None:
        """That each zero chunk the index uses is in the repository and decodes to zeros
        (restore never reads them: they are holes)."""
        lengths = {entry.data_length for entry in index.entries if entry.is_zero}
        for length in sorted(lengths):
            name = self.names.zero(length)
            where = f"{label}: the zero chunk {name} of backup {self.backup}"
            try:
                data = decode_frame(self.chunk(name), length)
            except FrameError as err:
                raise CorruptBackup(f"{where} {err}") from None
            if bytes(data) != bytes(length):
                raise CorruptBackup(f"{where} does not hold zeros")


def _read_index_file(path: Path, expected: int, what: str) -> bytes:
    """The index file's bytes, never more than its disk needs (+1 to tell a longer one)."""
    try:
        data = read_regular_file(path, expected)
    except FileNotFoundError:
        raise CorruptBackup(f"{what} is missing") from None
    except NotRegularFile:
        raise CorruptBackup(f"{what} is not a regular file") from None
    except OSError as err:
        raise CorruptBackup(f"cannot read {what}: {err.strerror}") from None
    if len(data) != expected:
        raise CorruptBackup(
            f"{what} has {'more than ' if len(data) > expected else ''}{len(data)} bytes; "
            f"its disk needs {expected}"
        )
    return data
