"""Read an indexed LZ4 frame stream back: its index, restore (sparse) and verify.

Both restore and verify decode frames on a pool of threads (python-lz4 and hashlib
release the GIL) and check each frame's sha256; the whole-disk digest is then folded
from those checked frame digests in order (see core/streamformat.py), so both recompute
it without a second pass over the data. Restore writes each frame where it belongs as
soon as it is decoded.
"""

import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.manifest import DiskRecord
from virtbackup.core.progress import ProgressSink
from virtbackup.core.streamformat import (
    FOOTER_MAGIC,
    INDEX_BODY_DIGEST_SIZE,
    INDEX_ENTRY,
    INDEX_FOOTER,
    INDEX_HEADER,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    ChunkedDigest,
    FrameEntry,
    IndexFormatError,
    IndexHeader,
    check_tiling,
    digest_size,
    unpack_entries,
    unpack_header,
    zero_digest,
)
from virtbackup.engine.frames import Buffer, FrameError, decode_frame, is_zero_frame, zeros
from virtbackup.engine.io_control import WriteBehind, drop_cached, reuse_freed_memory

SPARSE_BLOCK = 4096  # zero runs of this granularity become holes on restore

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class StreamIndex:
    path: Path
    header: IndexHeader
    entries: list[FrameEntry]
    index_offset: int


def read_index(path: Path, label: str) -> StreamIndex:
    """Read and check the index of stream `path`; CorruptBackup names `label` on failure."""
    try:
        with open(path, "rb") as stream:
            return _read_index(stream.fileno(), path)
    except FileNotFoundError:
        raise CorruptBackup(f"{label}: stream file {path} is missing") from None
    except IndexFormatError as err:
        raise CorruptBackup(f"{label}: {path.name} has a bad index ({err})") from None
    except OSError as err:
        raise CorruptBackup(f"{label}: cannot read {path}: {err.strerror}") from None


def _read_index(fd: int, path: Path) -> StreamIndex:
    size = os.fstat(fd).st_size
    if size < INDEX_FOOTER.size:
        raise IndexFormatError("the file is truncated (no index footer)")
    index_offset, magic = INDEX_FOOTER.unpack(os.pread(fd, INDEX_FOOTER.size, size - 16))
    if magic != FOOTER_MAGIC or index_offset >= size:
        raise IndexFormatError("the file is truncated or was not written by virtbackup")
    frame_magic, content_size = SKIPPABLE_HEADER.unpack(
        os.pread(fd, SKIPPABLE_HEADER.size, index_offset)
    )
    content_end = index_offset + SKIPPABLE_HEADER.size + content_size
    if frame_magic != SKIPPABLE_MAGIC or content_end != size:
        raise IndexFormatError("the index frame does not end at the end of the file")
    body_size = content_size - INDEX_BODY_DIGEST_SIZE - INDEX_FOOTER.size
    body = os.pread(fd, body_size, index_offset + SKIPPABLE_HEADER.size)
    stored_digest = os.pread(fd, INDEX_BODY_DIGEST_SIZE, index_offset + 8 + body_size)
    if len(body) != body_size or hashlib.sha256(body).digest() != stored_digest:
        raise IndexFormatError("the index does not match its digest")
    header = unpack_header(body[: INDEX_HEADER.size])
    entries_raw = body[INDEX_HEADER.size :]
    if len(entries_raw) != header.frame_count * INDEX_ENTRY.size:
        raise IndexFormatError("the index holds a different number of frames than it says")
    entries = unpack_entries(entries_raw, header.frame_count, digest_size(header.frame_digest))
    check_tiling(header, entries, index_offset)
    return StreamIndex(path, header, entries, index_offset)


class _FrameDecoder:
    """Reads, decompresses and checks one frame at a time; shared by the pool threads."""

    def __init__(self, index: StreamIndex, fd: int, label: str) -> None:
        self.index = index
        self.fd = fd
        self.label = label

    def decode(self, entry: FrameEntry) -> Buffer | None:
        """The frame's bytes, or None for a zero frame; CorruptBackup on any mismatch.
        A frame that is returned has the digest `entry.digest`."""
        frame = os.pread(self.fd, entry.stored_length, entry.stored_offset)
        drop_cached(self.fd, entry.stored_offset, entry.stored_length)
        if len(frame) != entry.stored_length:
            raise self._error(entry, "is truncated")
        if entry.is_zero and is_zero_frame(frame, entry.data_length):
            # byte-identical to the frame of zeros: nothing to decompress
            if entry.digest != zero_digest(entry.data_length, self.index.header.frame_digest):
                raise self._error(entry, "does not match its digest")
            return None
        try:
            data = decode_frame(frame, entry.data_length)
        except FrameError as err:
            raise self._error(entry, str(err)) from None
        if hashlib.new(self.index.header.frame_digest, data).digest() != entry.digest:
            raise self._error(entry, "does not match its digest")
        if entry.is_zero:
            if bytes(data) != zeros(len(data)):
                raise self._error(entry, "is marked as zeros but holds data")
            return None
        return data

    def _error(self, entry: FrameEntry, what: str) -> CorruptBackup:
        return CorruptBackup(
            f"{self.label}: the frame for disk offset {entry.data_offset} "
            f"(stored at byte {entry.stored_offset} of {self.index.path.name}) {what}"
        )


def restore_stream(
    index: StreamIndex,
    target_fd: int,
    label: str,
    progress: ProgressSink,
    workers: int = 0,
) -> str:
    """Write the stream's data into `target_fd` (an empty file), sparse; return the hex
    whole-disk digest recomputed from the checked frames. Frames are decoded and checked
    in parallel and written in order by the calling thread (one writer: parallel writes
    to one file only contend for its lock)."""
    os.ftruncate(target_fd, index.header.data_size)  # all hole; frames fill in the data
    write_behind = WriteBehind(target_fd)

    def write(entry: FrameEntry, data: Buffer | None) -> None:
        if data is not None:
            _write_sparse(target_fd, entry.data_offset, data)
            write_behind.written(entry.data_offset + entry.data_length)

    with open(index.path, "rb") as stream:
        decoder = _FrameDecoder(index, stream.fileno(), label)
        digest = _each_frame_in_order(index, decoder.decode, write, label, progress, workers)
    os.fsync(target_fd)
    drop_cached(target_fd, 0, 0)
    return digest


def verify_stream(index: StreamIndex, label: str, progress: ProgressSink, workers: int = 0) -> str:
    """Check every frame and return the hex whole-disk digest recomputed from the data."""
    with open(index.path, "rb") as stream:
        decoder = _FrameDecoder(index, stream.fileno(), label)
        return _each_frame_in_order(
            index, decoder.decode, lambda _entry, _data: None, label, progress, workers
        )


def _each_frame_in_order(
    index: StreamIndex,
    decode: Callable[[FrameEntry], Buffer | None],
    consume: Callable[[FrameEntry, Buffer | None], None],
    label: str,
    progress: ProgressSink,
    workers: int,
) -> str:
    """Decode all frames in parallel (`decode` raises unless a frame's data has its
    entry's digest), hand them to `consume` in order and fold the checked digests."""
    reuse_freed_memory()
    whole = ChunkedDigest(index.header.frame_digest)
    progress.on_start(index.header.data_size, label)
    try:
        decoded = _map_bounded(decode, index.entries, workers)
        for entry, data in zip(index.entries, decoded, strict=True):
            consume(entry, data)
            whole.add(entry.digest)
            progress.on_advance(entry.data_length)
    finally:
        progress.on_done()
    return whole.hexdigest()


def check_index_matches(index: StreamIndex, disk: DiskRecord) -> None:
    """Raise CorruptBackup unless the stream's index agrees with the manifest's record."""
    header = index.header
    if header.data_size != disk.byte_size:
        raise CorruptBackup(
            f"{disk.target}: {disk.file} holds {header.data_size} bytes, "
            f"the manifest says {disk.byte_size}"
        )
    if header.whole_digest_name != disk.digest_algorithm or header.chunk_size != disk.chunk_size:
        raise CorruptBackup(
            f"{disk.target}: the index and the manifest use different digests "
            f"({header.whole_digest_name}, {disk.digest_algorithm})"
        )
    if header.whole_digest.hex() != disk.digest:
        raise CorruptBackup(f"{disk.target}: the index and the manifest disagree on the digest")


def _write_sparse(fd: int, offset: int, data: Buffer) -> None:
    """pwrite the non-zero blocks of `data`; zero blocks stay holes of the target."""
    block = data if isinstance(data, bytes) else bytes(data)  # a stored block: rare
    zero = zeros(SPARSE_BLOCK)
    length = len(block)
    run_start = -1
    for at in range(0, length, SPARSE_BLOCK):
        # startswith compares in place (memcmp, no slice copied)
        if block.startswith(zero if length - at >= SPARSE_BLOCK else zero[: length - at], at):
            if run_start >= 0:
                _pwrite_all(fd, memoryview(block)[run_start:at], offset + run_start)
                run_start = -1
        elif run_start < 0:
            run_start = at
    if run_start >= 0:
        _pwrite_all(fd, memoryview(block)[run_start:], offset + run_start)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def _map_bounded(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items on a thread pool, results in order, at most 2 per worker pending."""
    count = workers or os.cpu_count() or 1
    pending: deque[Future[R]] = deque()
    stop = threading.Event()

    def guarded(item: T) -> R:
        if stop.is_set():
            raise RuntimeError("cancelled")
        return fn(item)

    with ThreadPoolExecutor(count, "vb-decode") as pool:
        try:
            for item in items:
                pending.append(pool.submit(guarded, item))
                if len(pending) >= 2 * count:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            stop.set()
            for future in pending:
                future.cancel()
