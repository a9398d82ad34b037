"""Being a good neighbour on the host: idle I/O priority, bandwidth limit, page cache
(and one allocator setting for the data path).

I/O priority is set with the ioprio_set(2) syscall through ctypes (what `ionice -c 3`
does), for the calling thread only: Linux keeps I/O priority per thread, so the engine
calls it on its reading thread and the CLI's own thread keeps its priority.
"""

import ctypes
import fcntl
import functools
import logging
import os
import platform
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "ppc64le": 273, "s390x": 282}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13


def set_thread_io_idle() -> bool:
    """Put the calling thread in the idle I/O class; False (logged) where that fails."""
    number = _IOPRIO_SET.get(platform.machine())
    if number is None:
        log.debug("ioprio_set: unknown syscall number on %s", platform.machine())
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    # who=0 with IOPRIO_WHO_PROCESS means the calling thread.
    value = _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT
    if libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, value) != 0:
        log.debug("ioprio_set failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


@functools.cache
def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed chunk-sized buffers for reuse rather than unmap or trim
    them: python-lz4 allocates a few MiB per frame, and memory fresh from the kernel
    costs a page fault per 4 KiB (measured: ~500 per 4 MiB chunk, ~7 % of the CPU time
    of a backup). Process-wide, once; the peak RSS does not change. False where it
    cannot be done (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 64 << 20) and mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def sync_filesystem(path: Path) -> None:
    """Make everything written to the file system holding `path` durable, in one call
    (syncfs(2): one journal commit for many files, where an fsync of each costs one
    commit per file); os.sync() where syncfs is missing. OSError when it fails."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs = _libc_syncfs()
        if syncfs is None:
            os.sync()
        elif syncfs(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), str(path))
    finally:
        os.close(fd)


@functools.cache
def _libc_syncfs() -> "ctypes._NamedFuncPointer | None":
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def drop_cached(fd: int, offset: int, length: int) -> None:
    """Tell the kernel we will not reread these pages, so a backup does not flush the
    host's page cache (only clean pages go; written data must be synced first)."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # not supported on this file (e.g. a pipe): nothing to spare


DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffers: a page covers any block size


def set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on or off for `fd`: writes then go from our buffer to the device,
    with no copy into the page cache and no dirty pages for writeback to find. False
    (nothing changed) where the file system does not do direct I/O."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return True


class WriteBehind:
    """Keeps a long sequential write from piling up in the page cache: every `every` bytes
    it starts writeback of what is new and drops what an earlier call already sent to disk
    (POSIX_FADV_DONTNEED does both and does not wait, unlike fdatasync), so the final
    fsync has little left to do and the host's cache is not flooded."""

    def __init__(self, fd: int, every: int = 32 << 20, lag: int = 64 << 20) -> None:
        self._fd = fd
        self._every = every
        self._lag = lag
        self._kicked = 0

    def written(self, end: int) -> None:
        """Bytes up to offset `end` have been written."""
        if end - self._kicked >= self._every:
            start = max(0, self._kicked - self._lag)
            drop_cached(self._fd, start, end - start)
            self._kicked = end


class Throttle:
    """Keep an average rate of at most `rate` bytes/s (None: no limit). Thread-safe."""

    def __init__(self, rate: int | None) -> None:
        self._rate = rate
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._done = 0

    def consume(self, nbytes: int) -> None:
        if not self._rate:
            return
        with self._lock:
            self._done += nbytes
            due = self._start + self._done / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
    """Write `parts` to `fd` in as few writev calls as the kernel takes; the bytes written."""
    views = [memoryview(part) for part in parts]
    total = 0
    while views:
        written = os.writev(fd, views)
        total += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]
    return total


class NotRegularFile(OSError):
    """The path names a directory, FIFO, device or socket, not a file."""


def read_regular_file(path: Path, limit: int, uncache: bool = False) -> bytes:
    """At most `limit` + 1 bytes of the regular file `path` (one more than allowed tells
    a longer file), never through a symbolic link nor blocking on a FIFO planted in its
    place: OSError (FileNotFoundError, NotRegularFile, ...) when it cannot be read.
    `uncache`: drop its pages from the page cache once read (drop_cached)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        # `limit` may come from untrusted input (the disk size a manifest claims) and
        # read() allocates what it is asked for: ask for no more than the file holds
        data = file.read(min(limit, status.st_size) + 1)
        if uncache:
            drop_cached(fd, 0, 0)
        return data
