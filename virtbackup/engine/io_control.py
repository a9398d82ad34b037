"""Being a good neighbour on the host: idle I/O priority, bandwidth limit, page cache.

I/O priority is set with the ioprio_set(2) syscall through ctypes (what `ionice -c 3`
does), for the calling thread only: Linux keeps I/O priority per thread, so the engine
calls it on its reading thread and the CLI's own thread keeps its priority.
"""

import ctypes
import logging
import os
import platform
import threading
import time

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


def drop_cached(fd: int, offset: int, length: int) -> None:
    """Tell the kernel we will not reread these pages, so a backup does not flush the
    host's page cache (only clean pages go; written data must be synced first)."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # not supported on this file (e.g. a pipe): nothing to spare


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
