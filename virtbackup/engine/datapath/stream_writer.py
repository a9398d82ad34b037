"""Write one disk source (image file or block device) as an indexed LZ4 frame stream.

The pipeline has three stages:
- one reading thread (idle I/O class) walks the chunk grid; chunks without data (holes,
  found with SEEK_DATA) are not read at all, the others are read into a free buffer of a
  fixed pool (preadv, no allocation per chunk) and handed to the workers;
- a pool of worker threads turns each chunk into a frame: an all-zero chunk gets the
  prepared zero frame, any other is compressed and hashed (sha256); python-lz4 and
  hashlib release the GIL, so the workers use all cores;
- the calling thread takes the results in order, folds each frame's digest into the
  whole-disk digest (no second pass over the data), writes each frame with one writev,
  gives the buffer back and collects the index.
The pool and a bounded queue cap the chunks in flight, so memory stays bounded whatever
the image size. Written data is pushed to disk as it goes (writeback started with
POSIX_FADV_DONTNEED, which also drops what is already on disk from the page cache) and
synced once at the end. See core/streamformat.py for the format.
"""

import errno
import hashlib
import os
import queue
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from virtbackup.adapters.file_label import file_label
from virtbackup.core.backup_errors import (
    SourceError,
    write_error,
)
from virtbackup.core.progress import ProgressSink
from virtbackup.core.streamformat import (
    DEFAULT_CHUNK_SIZE,
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
from virtbackup.engine.datapath.frames import Buffer, EncodedChunk, encode_frame, zero_chunk, zeros
from virtbackup.engine.datapath.io_control import (
    Throttle,
    WriteBehind,
    drop_cached,
    reuse_freed_memory,
    set_thread_io_idle,
    write_all,
)

_SPOOL_IN_MEMORY = 4 << 20  # index entries beyond this go to a temporary file
_IN_FLIGHT_BYTES = 96 << 20  # cap on the chunks read but not written (RSS < 256 MiB)
_ZERO_PAGE = 4096


@dataclass(frozen=True)
class WriterOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int = 0  # 0: one per CPU
    max_in_flight: int = 0  # chunks read but not yet written; 0: 2 per worker + 2, capped
    bwlimit: int | None = None  # bytes/s read from the source; None: no limit
    io_idle: bool = True  # reading thread in the idle I/O class (like `ionice -c 3`)
    compression_level: int = 0  # as `lz4 -N`: up to 2 fast (the default), 3 to 12 LZ4HC


@dataclass(frozen=True)
class StreamResult:
    data_size: int  # uncompressed bytes (the source's size)
    stored_size: int  # bytes of the stream file, index included
    digest_name: str
    digest: str  # hex of the chunked whole-disk digest (core/streamformat.py)
    frames: int
    zero_frames: int
    bytes_read: int  # bytes actually read from the source (holes are not read)


@dataclass(frozen=True)
class _Chunk:
    offset: int
    length: int
    buffer: bytearray | None  # None: a hole, not read; else back to the pool when written
    encoded: "Future[EncodedChunk] | None"


@dataclass(frozen=True)
class _ReadFailed:
    error: BaseException


_END = object()


def write_stream(
    source: Path,
    out: IO[bytes],
    progress: ProgressSink,
    label: str,
    options: WriterOptions | None = None,
) -> StreamResult:
    """Write `source` to the binary file `out` (positioned at 0) and return what it wrote."""
    options = options or WriterOptions()
    reuse_freed_memory()
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise SourceError(f"cannot open disk source {source}: {err.strerror}") from None
    try:
        size, is_file = _source_size(fd)
        progress.on_start(size, label)
        try:
            return _Writer(fd, source, size, is_file, out, progress, options).run()
        finally:
            progress.on_done()
    finally:
        os.close(fd)


def encode_chunk(buffer: bytearray, length: int, level: int = 0) -> EncodedChunk:
    """Compress and hash the first `length` bytes of `buffer` (on a worker thread). An
    all-zero chunk gets the prepared frame and cached digest: startswith is a memcmp in
    place, and a data chunk rarely starts with a zero page, so it is hardly compared."""
    zero = zeros(min(length, _ZERO_PAGE))
    if buffer.startswith(zero) and buffer.startswith(zeros(length)):
        return zero_chunk(length)
    data = memoryview(buffer)[:length]
    parts, size = encode_frame(data, level)
    return EncodedChunk(parts, size, hashlib.new(FRAME_DIGEST, data).digest(), is_zero=False)


def _source_size(fd: int) -> tuple[int, bool]:
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode):
        return info.st_size, True
    if stat.S_ISBLK(info.st_mode):
        return os.lseek(fd, 0, os.SEEK_END), False
    raise SourceError("disk source is neither a regular file nor a block device")


class _DataMap:
    """Answers "has [start, end) any data?" with SEEK_DATA, remembering the next data
    offset so that a long hole costs one syscall, not one per chunk."""

    def __init__(self, fd: int, is_file: bool) -> None:
        self._fd = fd
        self._sparse_aware = is_file  # block devices report everything as data
        self._next_data = -1  # valid for queries starting at or after _asked
        self._asked = -1

    def has_data(self, start: int, end: int) -> bool:
        if not self._sparse_aware:
            return True
        if not (self._asked <= start <= self._next_data):
            self._asked = start
            try:
                self._next_data = os.lseek(self._fd, start, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # no data after start
                    self._next_data = 1 << 63
                elif err.errno == errno.EINVAL:  # filesystem without SEEK_DATA
                    self._sparse_aware = False
                    return True
                else:
                    raise
        return self._next_data < end


class _Writer:
    def __init__(
        self,
        fd: int,
        source: Path,
        size: int,
        is_file: bool,
        out: IO[bytes],
        progress: ProgressSink,
        options: WriterOptions,
    ) -> None:
        self.fd = fd
        self.source = source
        self.size = size
        self.out = out
        self.out_fd = out.fileno()
        self.progress = progress
        self.options = options
        self.data_map = _DataMap(fd, is_file)
        self.workers = options.workers or os.cpu_count() or 1
        in_flight = options.max_in_flight or min(
            2 * self.workers + 2, max(4, _IN_FLIGHT_BYTES // options.chunk_size)
        )
        self.in_flight: queue.Queue[object] = queue.Queue(in_flight)
        # One buffer per queued chunk, plus the one being read and the one being written.
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(in_flight + 2):
            self.free.put(bytearray(options.chunk_size))
        self.stop = threading.Event()
        self.whole = ChunkedDigest(FRAME_DIGEST)
        self.position = 0
        self.write_behind = WriteBehind(self.out_fd)
        self.frames = 0
        self.zero_frames = 0
        self.bytes_read = 0

    def run(self) -> StreamResult:
        # Spill a big index next to the stream, not to /tmp (which may be small).
        name = getattr(self.out, "name", None)
        spool_dir = str(Path(name).parent) if isinstance(name, str) else None
        entries = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY, dir=spool_dir)
        self.out.flush()  # from here on the stream is written to the descriptor
        with entries, ThreadPoolExecutor(self.workers, "vb-compress") as pool:
            reader = threading.Thread(target=self._read, args=(pool,), name="vb-read")
            reader.start()
            try:
                for chunk, encoded in self._results():
                    entry = FrameEntry(
                        stored_offset=self.position,
                        stored_length=encoded.size,
                        data_offset=chunk.offset,
                        data_length=chunk.length,
                        is_zero=encoded.is_zero,
                        digest=encoded.digest,
                    )
                    self.whole.add(encoded.digest)
                    self._write(encoded.parts)
                    if chunk.buffer is not None:  # written: the buffer can be refilled
                        self.free.put(chunk.buffer)
                    entries.write(pack_entry(entry))
                    self.frames += 1
                    self.zero_frames += entry.is_zero
                    self.progress.on_advance(chunk.length)
            finally:
                self.stop.set()
                _drain(self.in_flight)
                reader.join()
                pool.shutdown(cancel_futures=True)
            digest = self.whole.digest()
            self._write_index(entries, digest)
        self._sync()
        return StreamResult(
            data_size=self.size,
            stored_size=self.position,
            digest_name=chunked_digest_name(self.options.chunk_size),
            digest=digest.hex(),
            frames=self.frames,
            zero_frames=self.zero_frames,
            bytes_read=self.bytes_read,
        )

    def _read(self, pool: ThreadPoolExecutor) -> None:
        """The reading thread: holes become chunks without data, the rest goes to the pool."""
        try:
            if self.options.io_idle:
                set_thread_io_idle()
            throttle = Throttle(self.options.bwlimit)
            step = self.options.chunk_size
            for offset in range(0, self.size, step):
                length = min(step, self.size - offset)
                if self.stop.is_set():
                    return
                if not self.data_map.has_data(offset, offset + length):
                    item: object = _Chunk(offset, length, None, None)
                else:
                    buffer = self._free_buffer()
                    if buffer is None:
                        return
                    self._pread(memoryview(buffer)[:length], offset)
                    self.bytes_read += length
                    throttle.consume(length)
                    encoded = pool.submit(
                        encode_chunk, buffer, length, self.options.compression_level
                    )
                    item = _Chunk(offset, length, buffer, encoded)
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the writing thread, which raises it
            self._put(_ReadFailed(err))

    def _free_buffer(self) -> bytearray | None:
        while not self.stop.is_set():
            try:
                return self.free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _pread(self, data: memoryview, offset: int) -> None:
        """Fill `data` from the source at `offset`."""
        done = 0
        try:
            while done < len(data):
                got = os.preadv(self.fd, [data[done:]], offset + done)
                if not got:
                    raise SourceError(
                        f"disk source {self.source} ended at byte {offset + done} "
                        f"while its size is {self.size}: did it change during the backup?"
                    )
                done += got
        except OSError as err:
            raise SourceError(
                f"cannot read disk source {self.source} at byte {offset}: {err.strerror}"
            ) from None
        drop_cached(self.fd, offset, len(data))

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.in_flight.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _results(self) -> Iterator[tuple[_Chunk, EncodedChunk]]:
        while True:
            item = self.in_flight.get()
            if item is _END:
                return
            if isinstance(item, _ReadFailed):
                raise item.error
            assert isinstance(item, _Chunk)
            if item.encoded is None:
                yield item, zero_chunk(item.length)
            else:
                yield item, item.encoded.result()

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

    def _write_index(self, entries: IO[bytes], whole_digest: bytes) -> None:
        header = IndexHeader(
            version=STREAM_FORMAT_VERSION,
            chunk_size=self.options.chunk_size,
            data_size=self.size,
            frame_count=self.frames,
            frame_digest=FRAME_DIGEST,
            whole_digest_name=chunked_digest_name(self.options.chunk_size),
            whole_digest=whole_digest,
        )
        index_offset = self.position
        body_digest = hashlib.sha256()
        packed_header = pack_header(header)
        entries_size = entries.tell()
        content_size = len(packed_header) + entries_size + body_digest.digest_size
        content_size += INDEX_FOOTER.size
        self._write((SKIPPABLE_HEADER.pack(SKIPPABLE_MAGIC, content_size),))
        self._write((packed_header,))
        body_digest.update(packed_header)
        entries.seek(0)
        while block := entries.read(1 << 20):
            body_digest.update(block)
            self._write((block,))
        self._write((body_digest.digest(), INDEX_FOOTER.pack(index_offset, FOOTER_MAGIC)))


def _drain(items: "queue.Queue[object]") -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return
