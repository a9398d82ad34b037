"""Write one disk source (image file or block device) as an indexed LZ4 frame stream.

The source is read by the chunk pipeline (chunk_pipeline.py); its workers turn each
chunk into a frame: an all-zero chunk gets the prepared zero frame, any other is
compressed and hashed (sha256). The calling thread takes the frames in order, folds each
frame's digest into the whole-disk digest (no second pass over the data), writes each
frame with one writev, gives the buffer back and collects the index. Written data is
pushed to disk as it goes (writeback started with POSIX_FADV_DONTNEED, which also drops
what is already on disk from the page cache) and synced once at the end. See
core/streamformat.py for the format.
"""

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Self

from virtbackup.adapters.file_label import file_label
from virtbackup.core.backup_errors import write_error
from virtbackup.core.progress import ProgressSink
from virtbackup.core.streamformat import (
    FOOTER_MAGIC,
    FRAME_DIGEST,
    INDEX_FOOTER,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    STREAM_FORMAT_VERSION,
    ChunkedDigest,
    FrameEntry,
    IndexHeader,
    chunked_digest_name,
    pack_entry,
    pack_header,
)
from virtbackup.engine.datapath.chunk_pipeline import ReadableSource, SourceChunks, WriterOptions
from virtbackup.engine.datapath.frames import Buffer, EncodedChunk, encode_frame, zero_chunk, zeros
from virtbackup.engine.datapath.io_control import WriteBehind, drop_cached, write_all

_SPOOL_IN_MEMORY = 4 << 20  # index entries beyond this go to a temporary file
_ZERO_PAGE = 4096


@dataclass(frozen=True)
class StreamResult:
    data_size: int  # uncompressed bytes (the source's size)
    stored_size: int  # bytes of the stream file, index included
    digest_name: str
    digest: str  # hex of the chunked whole-disk digest (core/streamformat.py)
    frames: int
    zero_frames: int
    bytes_read: int  # bytes actually read from the source (holes are not read)


def write_stream(
    source: Path | ReadableSource,
    out: IO[bytes],
    progress: ProgressSink,
    label: str,
    options: WriterOptions | None = None,
) -> StreamResult:
    """Write `source` to the binary file `out` (positioned at 0) and return what it wrote."""
    options = options or WriterOptions()
    work = partial(_encode_at_level, options.compression_level)
    with SourceChunks(source, options, work) as chunks:
        progress.on_start(chunks.size, label)
        try:
            return _write_source(chunks, out, progress, options)
        finally:
            progress.on_done()


def is_zero_chunk(buffer: bytearray, length: int) -> bool:
    """Whether the first `length` bytes of `buffer` are all zero: startswith is a memcmp
    in place, and a data chunk rarely starts with a zero page, so it is hardly compared."""
    zero = zeros(min(length, _ZERO_PAGE))
    return buffer.startswith(zero) and buffer.startswith(zeros(length))


def encode_chunk(buffer: bytearray, length: int, level: int = 0) -> EncodedChunk:
    """Compress and hash the first `length` bytes of `buffer` (on a worker thread). An
    all-zero chunk gets the prepared frame and cached digest."""
    if is_zero_chunk(buffer, length):
        return zero_chunk(length)
    data = memoryview(buffer)[:length]
    parts, size = encode_frame(data, level)
    return EncodedChunk(parts, size, hashlib.new(FRAME_DIGEST, data).digest(), is_zero=False)


def _encode_at_level(level: int, buffer: bytearray, length: int) -> EncodedChunk:
    return encode_chunk(buffer, length, level)


class StreamFile:
    """A stream file being written to `out` (positioned at 0): frames in disk order,
    then, by `finish`, the index of their entries. Used as a context manager (the
    entries spool is dropped on leaving). Also the writer of `export`, which hands it
    frames that are already stored."""

    def __init__(self, out: IO[bytes], chunk_size: int) -> None:
        self.out = out
        self.out_fd = out.fileno()
        self.chunk_size = chunk_size
        self.whole = ChunkedDigest(FRAME_DIGEST)
        self.position = 0
        self.data_size = 0
        self.frames = 0
        self.zero_frames = 0
        self.write_behind = WriteBehind(self.out_fd)
        # Spill a big index next to the stream, not to /tmp (which may be small).
        name = getattr(out, "name", None)
        spool_dir = str(Path(name).parent) if isinstance(name, str) else None
        self.entries = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY, dir=spool_dir)
        out.flush()  # from here on the stream is written to the descriptor

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.entries.close()

    def add(self, data_offset: int, data_length: int, encoded: EncodedChunk) -> None:
        """Write the next frame (of the disk's bytes at `data_offset`)."""
        entry = FrameEntry(
            stored_offset=self.position,
            stored_length=encoded.size,
            data_offset=data_offset,
            data_length=data_length,
            is_zero=encoded.is_zero,
            digest=encoded.digest,
        )
        self.whole.add(encoded.digest)
        self._write(encoded.parts)
        self.entries.write(pack_entry(entry))
        self.frames += 1
        self.zero_frames += entry.is_zero
        self.data_size = data_offset + data_length

    def finish(self) -> str:
        """Write the index and sync; the hex whole-disk digest of the frames."""
        digest = self.whole.digest()
        self._write_index(digest)
        self._sync()
        return digest.hex()

    def _write(self, parts: tuple[Buffer, ...]) -> None:
        try:
            self.position += write_all(self.out_fd, parts)
        except OSError as err:
            raise write_error(err, file_label(self.out)) from None
        self.write_behind.written(self.position)

    def _sync(self) -> None:
        """Sync what was written and drop it from the page cache: a backup is not reread.
        A pipe (to `age` or `rclone`) has nothing to sync: whoever reads it stores it."""
        if not stat.S_ISREG(os.fstat(self.out_fd).st_mode):
            return
        try:
            os.fdatasync(self.out_fd)
        except OSError as err:
            raise write_error(err, file_label(self.out)) from None
        drop_cached(self.out_fd, 0, 0)

    def _write_index(self, whole_digest: bytes) -> None:
        header = IndexHeader(
            version=STREAM_FORMAT_VERSION,
            chunk_size=self.chunk_size,
            data_size=self.data_size,
            frame_count=self.frames,
            frame_digest=FRAME_DIGEST,
            whole_digest_name=chunked_digest_name(self.chunk_size),
            whole_digest=whole_digest,
        )
        index_offset = self.position
        body_digest = hashlib.sha256()
        packed_header = pack_header(header)
        entries_size = self.entries.tell()
        content_size = len(packed_header) + entries_size + body_digest.digest_size
        content_size += INDEX_FOOTER.size
        self._write((SKIPPABLE_HEADER.pack(SKIPPABLE_MAGIC, content_size),))
        self._write((packed_header,))
        body_digest.update(packed_header)
        self.entries.seek(0)
        while block := self.entries.read(1 << 20):
            body_digest.update(block)
            self._write((block,))
        self._write((body_digest.digest(), INDEX_FOOTER.pack(index_offset, FOOTER_MAGIC)))


def _write_source(
    chunks: SourceChunks[EncodedChunk],
    out: IO[bytes],
    progress: ProgressSink,
    options: WriterOptions,
) -> StreamResult:
    """The frames of the source's chunks, in order, as a stream file."""
    with StreamFile(out, options.chunk_size) as stream:
        for chunk in chunks.results():
            pending = chunk.result
            encoded = zero_chunk(chunk.length) if pending is None else pending.result()
            stream.add(chunk.offset, chunk.length, encoded)
            chunks.done(chunk)  # written: the buffer can be refilled
            progress.on_advance(chunk.length)
        stream.data_size = chunks.size  # (an empty source has no frame)
        digest = stream.finish()
    return StreamResult(
        data_size=chunks.size,
        stored_size=stream.position,
        digest_name=chunked_digest_name(options.chunk_size),
        digest=digest,
        frames=stream.frames,
        zero_frames=stream.zero_frames,
        bytes_read=chunks.bytes_read,
    )
