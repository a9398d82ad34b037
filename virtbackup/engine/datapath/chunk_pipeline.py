"""Read one disk source chunk by chunk on the grid and work on the chunks in parallel.

Both writers (the single stream, stream_writer.py, and the repository, chunk_writer.py)
read a source the same way, through three stages:
- one reading thread (idle I/O class) walks the chunk grid of a source (a file or block
  device, FileSource; an NBD export, nbd_source.py); chunks without data (holes: found
  with SEEK_DATA, or base:allocation over NBD) are not read at all, chunks the caller
  already knows (`known`: unchanged since an earlier backup) are not read either, and
  the others are read into a free buffer of a fixed pool (no allocation per chunk) and
  handed to the workers;
- a pool of worker threads runs the caller's `work` on each chunk read (python-lz4 and
  hashlib release the GIL, so the workers use all cores), and the caller's `known` job
  on each chunk it knows;
- the calling thread takes the results in order (`results`) and gives each buffer back
  (`done`) once it has used it.
The pool and a bounded queue cap the chunks in flight, so memory stays bounded whatever
the image size.
"""

import errno
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, Self, TypeVar

from virtbackup.core.backup_errors import SourceError
from virtbackup.core.streamformat import DEFAULT_CHUNK_SIZE
from virtbackup.engine.datapath.io_control import (
    Throttle,
    drop_cached,
    reuse_freed_memory,
    set_thread_io_idle,
)

_IN_FLIGHT_BYTES = 96 << 20  # cap on the chunks read but not written (RSS < 256 MiB)

R = TypeVar("R")


@dataclass(frozen=True)
class WriterOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int = 0  # 0: one per CPU
    max_in_flight: int = 0  # chunks read but not yet written; 0: 2 per worker + 2, capped
    bwlimit: int | None = None  # bytes/s read from the source; None: no limit
    io_idle: bool = True  # reading thread in the idle I/O class (like `ionice -c 3`)
    compression_level: int = 0  # as `lz4 -N`: up to 2 fast (the default), 3 to 12 LZ4HC
    # the chunk size asked for a repository: used when it is made, warned about when an
    # existing one has another (None: chunk_size, and no warning)
    repository_chunk_size: int | None = None


@dataclass(frozen=True)
class Chunk(Generic[R]):
    number: int  # on the grid, from 0
    offset: int
    length: int
    buffer: bytearray | None  # None: not read (a hole or a known chunk)
    result: "Future[R] | None"  # None: a hole


@dataclass(frozen=True)
class _ReadFailed:
    error: BaseException


_END = object()

Work = Callable[[bytearray, int], R]  # (buffer, length) -> result, on a worker
Known = Callable[[int], Callable[[], R] | None]  # chunk number -> its job, None: read it


class ReadableSource(Protocol):
    """What the pipeline reads: a size, which ranges hold data, and their bytes. A file
    or block device (FileSource); an NBD export (engine/datapath/nbd_source.py)."""

    size: int

    def has_data(self, start: int, end: int) -> bool: ...

    def read_into(self, data: memoryview, offset: int) -> None: ...

    def close(self) -> None: ...


class FileSource:
    """An image file or block device: holes found with SEEK_DATA, read with preadv,
    its pages dropped from the cache once read."""

    def __init__(self, path: Path) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise SourceError(f"cannot open disk source {path}: {err.strerror}") from None
        try:
            self.size, is_file = _source_size(self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.path = path
        self.data_map = _DataMap(self.fd, is_file)

    def has_data(self, start: int, end: int) -> bool:
        return self.data_map.has_data(start, end)

    def read_into(self, data: memoryview, offset: int) -> None:
        done = 0
        try:
            while done < len(data):
                got = os.preadv(self.fd, [data[done:]], offset + done)
                if not got:
                    raise SourceError(
                        f"disk source {self.path} ended at byte {offset + done} "
                        f"while its size is {self.size}: did it change during the backup?"
                    )
                done += got
        except OSError as err:
            raise SourceError(
                f"cannot read disk source {self.path} at byte {offset}: {err.strerror}"
            ) from None
        drop_cached(self.fd, offset, len(data))

    def close(self) -> None:
        os.close(self.fd)


class SourceChunks(Generic[R]):
    """An open disk source and the pipeline over it; a context manager (closes the
    source, stops the threads). `results` may be iterated once."""

    def __init__(
        self,
        source: Path | ReadableSource,
        options: WriterOptions,
        work: Work[R],
        known: Known[R] | None = None,
    ) -> None:
        reuse_freed_memory()
        self.source = FileSource(source) if isinstance(source, Path) else source
        self.size = self.source.size
        self.options = options
        self.work = work
        self.known = known
        self.workers = options.workers or os.cpu_count() or 1
        in_flight = options.max_in_flight or min(
            2 * self.workers + 2, max(4, _IN_FLIGHT_BYTES // options.chunk_size)
        )
        self.in_flight: queue.Queue[object] = queue.Queue(in_flight)
        # One buffer per queued chunk, plus the one being read and the one being used.
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(in_flight + 2):
            self.free.put(bytearray(options.chunk_size))
        self.stop = threading.Event()
        self.bytes_read = 0
        self._pool = ThreadPoolExecutor(self.workers, "vb-compress")
        self._reader = threading.Thread(target=self._read, name="vb-read")
        self._started = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        _drain(self.in_flight)
        if self._started:
            self._reader.join()
        self._pool.shutdown(cancel_futures=True)
        self.source.close()

    def results(self) -> Iterator[Chunk[R]]:
        """Every chunk of the grid in order, its result done or pending."""
        self._started = True
        self._reader.start()
        while True:
            item = self.in_flight.get()
            if item is _END:
                return
            if isinstance(item, _ReadFailed):
                raise item.error
            assert isinstance(item, Chunk)
            yield item

    def done(self, chunk: Chunk[R]) -> None:
        """The caller is through with the chunk: its buffer can be refilled."""
        if chunk.buffer is not None:
            self.free.put(chunk.buffer)

    def read_now(self, chunk: Chunk[R]) -> R:
        """Read a chunk on the calling thread after all (a known chunk that turned out
        to be gone) and run `work` on it."""
        buffer = bytearray(chunk.length)
        self.source.read_into(memoryview(buffer), chunk.offset)
        self.bytes_read += chunk.length
        return self.work(buffer, chunk.length)

    def _read(self) -> None:
        """The reading thread: holes become chunks without data, known chunks their
        job, the rest goes to the pool."""
        try:
            if self.options.io_idle:
                set_thread_io_idle()
            throttle = Throttle(self.options.bwlimit)
            step = self.options.chunk_size
            for number, offset in enumerate(range(0, self.size, step)):
                length = min(step, self.size - offset)
                if self.stop.is_set():
                    return
                job = self.known(number) if self.known is not None else None
                item: Chunk[R]
                if job is not None:
                    item = Chunk(number, offset, length, None, self._pool.submit(job))
                elif not self.source.has_data(offset, offset + length):
                    item = Chunk(number, offset, length, None, None)
                else:
                    buffer = self._free_buffer()
                    if buffer is None:
                        return
                    self.source.read_into(memoryview(buffer)[:length], offset)
                    self.bytes_read += length
                    throttle.consume(length)
                    result = self._pool.submit(self.work, buffer, length)
                    item = Chunk(number, offset, length, buffer, result)
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the calling thread, which raises it
            self._put(_ReadFailed(err))

    def _free_buffer(self) -> bytearray | None:
        while not self.stop.is_set():
            try:
                return self.free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.in_flight.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False


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


def _drain(items: "queue.Queue[object]") -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return
