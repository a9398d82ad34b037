"""Read a stream front to back from a pipe: for backups that cannot be read at random
(decrypted by `age -d`, downloaded by `rclone cat`).

The frames come first and the index last, so each frame is split off the pipe by its
LZ4 block sizes, its data length taken from the manifest's chunk grid, decoded and
hashed on the pool (as the random-access reader does), and written or dropped. When the
trailing index arrives, every frame seen must match its entry exactly (offsets,
lengths, zero flag, digest) and the folded whole-disk digest must match the index and
the manifest: the same checks as a random-access verify, without a second pass.
"""

import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.manifest import DiskRecord
from virtbackup.core.progress import ProgressSink
from virtbackup.core.streamformat import (
    FRAME_DIGEST,
    INDEX_BODY_DIGEST_SIZE,
    INDEX_ENTRY,
    INDEX_FOOTER,
    INDEX_HEADER,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    ChunkedDigest,
    FrameEntry,
    IndexFormatError,
    parse_index_content,
    zero_digest,
)
from virtbackup.engine.datapath.frames import (
    MAX_BLOCK,
    Buffer,
    FrameError,
    decode_frame,
    frame_header,
    is_zero_frame,
)
from virtbackup.engine.datapath.io_control import WriteBehind, drop_cached, reuse_freed_memory
from virtbackup.engine.datapath.sparse_target import write_sparse
from virtbackup.engine.datapath.stream_reader import map_bounded

_WORD = struct.Struct("<I")
_STORED = 0x8000_0000  # LZ4 frame block flag: stored uncompressed


@dataclass(frozen=True)
class _Frame:
    stored_offset: int
    raw: bytes
    data_offset: int
    data_length: int


@dataclass(frozen=True)
class _Decoded:
    entry: FrameEntry  # what the index must say about this frame
    data: Buffer | None  # None: zeros


def restore_sequential(
    stream: IO[bytes],
    disk: DiskRecord,
    target_fd: int,
    label: str,
    progress: ProgressSink,
    workers: int = 0,
) -> str:
    """Write the stream into `target_fd` (empty), sparse; return the whole-disk digest
    after checking every frame against the trailing index. The caller renames the
    target into place only if this returns and the digest matches the manifest."""
    os.ftruncate(target_fd, disk.byte_size)
    write_behind = WriteBehind(target_fd)

    def write(decoded: _Decoded) -> None:
        if decoded.data is not None:
            write_sparse(target_fd, decoded.entry.data_offset, decoded.data)
            write_behind.written(decoded.entry.data_offset + decoded.entry.data_length)

    with _BackgroundWriter(write) as writer:
        digest = _each_frame(stream, disk, label, progress, workers, writer.put)
    os.fsync(target_fd)
    drop_cached(target_fd, 0, 0)
    return digest


def verify_sequential(
    stream: IO[bytes], disk: DiskRecord, label: str, progress: ProgressSink, workers: int = 0
) -> str:
    """Check every frame of the stream and return the whole-disk digest."""
    return _each_frame(stream, disk, label, progress, workers, lambda _decoded: None)


def _each_frame(
    stream: IO[bytes],
    disk: DiskRecord,
    label: str,
    progress: ProgressSink,
    workers: int,
    consume: Callable[[_Decoded], None],
) -> str:
    reuse_freed_memory()
    splitter = _Splitter(stream, disk, label)
    seen: list[FrameEntry] = []
    progress.on_start(disk.byte_size, label)
    try:
        for decoded in map_bounded(splitter.decode, splitter.frames(), workers):
            consume(decoded)
            seen.append(decoded.entry)
            progress.on_advance(decoded.entry.data_length)
    finally:
        progress.on_done()
    return _check_against_index(splitter, seen, disk, label)


def _check_against_index(
    splitter: "_Splitter", seen: list[FrameEntry], disk: DiskRecord, label: str
) -> str:
    try:
        header, entries = parse_index_content(splitter.index_content, splitter.index_offset)
    except IndexFormatError as err:
        raise CorruptBackup(f"{label}: {disk.file} has a bad index ({err})") from None
    if header.data_size != disk.byte_size or header.chunk_size != disk.chunk_size:
        raise CorruptBackup(f"{label}: the index of {disk.file} disagrees with the manifest")
    if len(entries) != len(seen):
        raise CorruptBackup(
            f"{label}: {disk.file} holds {len(seen)} frames, its index lists {len(entries)}"
        )
    for listed, found in zip(entries, seen, strict=True):
        if listed != found:
            raise CorruptBackup(
                f"{label}: the frame for disk offset {found.data_offset} (stored at byte "
                f"{found.stored_offset} of {disk.file}) does not match its index entry"
            )
    whole = ChunkedDigest(header.frame_digest)
    whole.add_all(entry.digest for entry in seen)
    if whole.digest() != header.whole_digest:
        raise CorruptBackup(f"{label}: the index of {disk.file} records another digest")
    return whole.hexdigest()


class _BackgroundWriter:
    """Writes the decoded frames in order on a thread of its own, so that the calling
    thread's reading of the pipe and the writes to the target overlap (both were on the
    calling thread: an encrypted 2 GiB restore spent 1.9 s reading and 1.2 s writing
    there, one after the other). A write that fails ends the restore at the next `put`;
    a restore that fails stops the writer and waits for it before the target is
    touched again. At most `depth` frames wait for it."""

    def __init__(self, write: Callable[[_Decoded], None], depth: int = 4) -> None:
        self._write = write
        self._queue: queue.Queue[_Decoded | None] = queue.Queue(depth)
        self._failure: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vb-write", daemon=True)

    def __enter__(self) -> "_BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self._stopped.set()  # drop what is queued: the target is abandoned
        self._put(None)  # the end
        self._thread.join()
        if exc_type is None and self._failure is not None:
            raise self._failure

    def put(self, decoded: _Decoded) -> None:
        self._put(decoded)
        if self._failure is not None:
            raise self._failure

    def _put(self, item: _Decoded | None) -> None:
        # the writer drains the queue even after a failure, so this never waits long
        self._queue.put(item)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._failure is not None or self._stopped.is_set():
                continue
            try:
                self._write(item)
            except BaseException as err:  # handed to the calling thread
                self._failure = err


class _Splitter:
    """Splits the frames off the pipe (calling thread) and decodes them (pool threads)."""

    def __init__(self, stream: IO[bytes], disk: DiskRecord, label: str) -> None:
        self.stream = stream
        self.disk = disk
        self.label = label
        self.index_content = b""
        self.index_offset = -1
        self._blocks_per_frame = -(-disk.chunk_size // MAX_BLOCK)
        frames = -(-disk.byte_size // disk.chunk_size)
        # header, one entry per frame on the manifest's grid, body digest and footer
        self._max_index = (
            INDEX_HEADER.size
            + frames * INDEX_ENTRY.size
            + INDEX_BODY_DIGEST_SIZE
            + INDEX_FOOTER.size
        )

    def frames(self) -> Iterator[_Frame]:
        header = frame_header()
        position = 0
        data_offset = 0
        while True:
            start = self._read(4)
            if _WORD.unpack(start)[0] == SKIPPABLE_MAGIC:
                self._read_index(start, position)
                return
            if start + self._read(len(header) - 4) != header:
                raise self._damage(position, "is not a frame written by virtbackup")
            parts = [header]
            blocks = 0
            while True:
                word = self._read(4)
                parts.append(word)
                size = _WORD.unpack(word)[0] & ~_STORED
                if size == 0:
                    break
                blocks += 1
                if size > MAX_BLOCK or blocks > self._blocks_per_frame:
                    raise self._damage(position, "holds a block larger than the format's")
                parts.append(self._read(size))
            length = min(self.disk.chunk_size, self.disk.byte_size - data_offset)
            if length <= 0:
                raise self._damage(position, "lies beyond the disk's size")
            raw = b"".join(parts)
            yield _Frame(position, raw, data_offset, length)
            position += len(raw)
            data_offset += length

    def decode(self, frame: _Frame) -> _Decoded:
        """Decompress and hash one frame (on a pool thread)."""
        data: Buffer | None
        if is_zero_frame(frame.raw, frame.data_length):
            data, digest, is_zero = None, zero_digest(frame.data_length), True
        else:
            try:
                data = decode_frame(frame.raw, frame.data_length)
            except FrameError as err:
                raise self._damage(frame.stored_offset, str(err)) from None
            digest, is_zero = hashlib.new(FRAME_DIGEST, data).digest(), False
        entry = FrameEntry(
            stored_offset=frame.stored_offset,
            stored_length=len(frame.raw),
            data_offset=frame.data_offset,
            data_length=frame.data_length,
            is_zero=is_zero,
            digest=digest,
        )
        return _Decoded(entry, data)

    def _read_index(self, start: bytes, position: int) -> None:
        (content_size,) = _WORD.unpack(self._read(4))
        if content_size > self._max_index:
            raise self._damage(position, "starts an index of impossible size")
        self.index_content = self._read(content_size)
        if self.stream.read(1):
            raise CorruptBackup(f"{self.label}: {self.disk.file} goes on after its index")
        self.index_offset = position
        assert len(start) + 4 == SKIPPABLE_HEADER.size

    def _read(self, size: int) -> bytes:
        """Exactly `size` bytes from the pipe, or CorruptBackup (truncated)."""
        pieces = []
        missing = size
        while missing:
            piece = self.stream.read(missing)
            if not piece:
                raise CorruptBackup(f"{self.label}: {self.disk.file} is truncated")
            pieces.append(piece)
            missing -= len(piece)
        return b"".join(pieces)

    def _damage(self, stored_offset: int, what: str) -> CorruptBackup:
        return CorruptBackup(
            f"{self.label}: the frame stored at byte {stored_offset} of {self.disk.file} {what}"
        )
