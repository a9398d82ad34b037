"""Write one disk source (image file or block device) as an indexed LZ4 frame stream.

The pipeline has three stages:
- one reading thread (idle I/O class) walks the chunk grid; chunks without data (holes,
  found with SEEK_DATA) are not read at all, the others are read and handed to the pool;
- a pool of worker threads turns each chunk into a frame (zeros get the prepared frame);
- the calling thread takes the results in order, hashes the uncompressed bytes into the
  whole-disk digest, writes the frames and collects the index.
A bounded queue between reader and writer caps the chunks in flight, so memory stays
bounded whatever the image size. See core/streamformat.py for the format.
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

from virtbackup.core.backup_errors import DestinationFull, SourceError, StoreError
from virtbackup.core.progress import ProgressSink
from virtbackup.core.streamformat import (
    DEFAULT_CHUNK_SIZE,
    FOOTER_MAGIC,
    FRAME_DIGEST,
    INDEX_FOOTER,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    STREAM_FORMAT_VERSION,
    WHOLE_DIGEST,
    FrameEntry,
    IndexHeader,
    pack_entry,
    pack_header,
)
from virtbackup.engine.frames import EncodedChunk, encode_chunk, zero_chunk, zeros
from virtbackup.engine.io_control import Throttle, drop_cached, set_thread_io_idle

_SYNC_EVERY = 64 << 20  # written bytes between fdatasync + DONTNEED of the output
_SPOOL_IN_MEMORY = 4 << 20  # index entries beyond this go to a temporary file


@dataclass(frozen=True)
class WriterOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int = 0  # 0: one per CPU
    max_in_flight: int = 0  # chunks read but not yet written; 0: 2 per worker + 2
    bwlimit: int | None = None  # bytes/s read from the source; None: no limit
    io_idle: bool = True  # reading thread in the idle I/O class (like `ionice -c 3`)


@dataclass(frozen=True)
class StreamResult:
    data_size: int  # uncompressed bytes (the source's size)
    stored_size: int  # bytes of the stream file, index included
    digest_name: str
    digest: str  # hex of WHOLE_DIGEST over the uncompressed bytes
    frames: int
    zero_frames: int
    bytes_read: int  # bytes actually read from the source (holes are not read)


@dataclass(frozen=True)
class _Chunk:
    offset: int
    length: int
    data: bytes | None  # None: a hole, not read
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
        self.progress = progress
        self.options = options
        self.data_map = _DataMap(fd, is_file)
        self.workers = options.workers or os.cpu_count() or 1
        self.in_flight: queue.Queue[object] = queue.Queue(
            options.max_in_flight or 2 * self.workers + 2
        )
        self.stop = threading.Event()
        self.whole = hashlib.new(WHOLE_DIGEST)
        self.position = 0
        self.synced = 0
        self.frames = 0
        self.zero_frames = 0
        self.bytes_read = 0

    def run(self) -> StreamResult:
        # Spill a big index next to the stream, not to /tmp (which may be small).
        name = getattr(self.out, "name", None)
        spool_dir = str(Path(name).parent) if isinstance(name, str) else None
        entries = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY, dir=spool_dir)
        with entries, ThreadPoolExecutor(self.workers, "vb-compress") as pool:
            reader = threading.Thread(target=self._read, args=(pool,), name="vb-read")
            reader.start()
            try:
                for chunk, encoded in self._results():
                    entry = FrameEntry(
                        stored_offset=self.position,
                        stored_length=len(encoded.frame),
                        data_offset=chunk.offset,
                        data_length=chunk.length,
                        is_zero=encoded.is_zero,
                        digest=encoded.digest,
                    )
                    self._write(encoded.frame)
                    entries.write(pack_entry(entry))
                    self.frames += 1
                    self.zero_frames += encoded.is_zero
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
            digest_name=WHOLE_DIGEST,
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
                    data = self._pread(offset, length)
                    self.bytes_read += length
                    throttle.consume(length)
                    item = _Chunk(offset, length, data, pool.submit(encode_chunk, data))
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the writing thread, which raises it
            self._put(_ReadFailed(err))

    def _pread(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
            while len(data) < length:
                more = os.pread(self.fd, length - len(data), offset + len(data))
                if not more:
                    raise SourceError(
                        f"disk source {self.source} ended at byte {offset + len(data)} "
                        f"while its size is {self.size}: did it change during the backup?"
                    )
                data += more
        except OSError as err:
            raise SourceError(
                f"cannot read disk source {self.source} at byte {offset}: {err.strerror}"
            ) from None
        drop_cached(self.fd, offset, length)
        return data

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
                self.whole.update(zeros(item.length))
                yield item, zero_chunk(item.length)
            else:
                assert item.data is not None
                self.whole.update(item.data)
                yield item, item.encoded.result()

    def _write(self, data: bytes) -> None:
        try:
            self.out.write(data)
        except OSError as err:
            raise _destination_error(err, self.out) from None
        self.position += len(data)
        if self.position - self.synced >= _SYNC_EVERY:
            self._sync()

    def _sync(self) -> None:
        """Flush what was written and drop it from the page cache: a backup is not reread."""
        try:
            self.out.flush()
            os.fdatasync(self.out.fileno())
        except OSError as err:
            raise _destination_error(err, self.out) from None
        drop_cached(self.out.fileno(), 0, 0)
        self.synced = self.position

    def _write_index(self, entries: IO[bytes], whole_digest: bytes) -> None:
        header = IndexHeader(
            version=STREAM_FORMAT_VERSION,
            chunk_size=self.options.chunk_size,
            data_size=self.size,
            frame_count=self.frames,
            frame_digest=FRAME_DIGEST,
            whole_digest_name=WHOLE_DIGEST,
            whole_digest=whole_digest,
        )
        index_offset = self.position
        body_digest = hashlib.sha256()
        packed_header = pack_header(header)
        entries_size = entries.tell()
        content_size = len(packed_header) + entries_size + body_digest.digest_size
        content_size += INDEX_FOOTER.size
        self._write(SKIPPABLE_HEADER.pack(SKIPPABLE_MAGIC, content_size))
        self._write(packed_header)
        body_digest.update(packed_header)
        entries.seek(0)
        while block := entries.read(1 << 20):
            body_digest.update(block)
            self._write(block)
        self._write(body_digest.digest())
        self._write(INDEX_FOOTER.pack(index_offset, FOOTER_MAGIC))


def _drain(items: "queue.Queue[object]") -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return


def _destination_error(err: OSError, out: IO[bytes]) -> StoreError:
    name = getattr(out, "name", "the backup file")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DestinationFull(
            f"no space left on the backup destination while writing {name}",
            "free space there or choose another --dest",
        )
    return StoreError(f"cannot write {name}: {err.strerror}")
