"""Write restored data into an image file: sparse, and with O_DIRECT where it pays.

Only the blocks of data that are not all zeros are written (SPARSE_BLOCK granularity), so
the zero blocks of a disk stay holes of the restored file. Restore from a seekable stream
writes through SparseTarget: long runs with O_DIRECT from reused aligned buffers
(BufferPool), short runs through the page cache, one fsync at the end; a sequential
restore (a pipe) writes each block with write_sparse.
"""

import errno
import mmap
import os
import threading
from pathlib import Path

from virtbackup.engine.datapath.frames import Buffer, zeros
from virtbackup.engine.datapath.io_control import (
    DIRECT_ALIGN,
    WriteBehind,
    drop_cached,
    set_direct,
)

SPARSE_BLOCK = 4096  # zero runs of this granularity become holes on restore
_DIRECT_MIN = 256 << 10  # shorter runs are written buffered (see SparseTarget)


def on_other_device(stream: Path, target_fd: int) -> bool:
    return os.stat(stream).st_dev != os.fstat(target_fd).st_dev


class BufferPool:
    """Page-aligned buffers of one chunk each (anonymous mmaps), reused: restore decodes
    into them and writes from them with O_DIRECT. There are only as many as frames are
    in flight at once (a handful), so memory stays bounded without a limit here."""

    def __init__(self, chunk_size: int) -> None:
        self._size = -(-chunk_size // DIRECT_ALIGN) * DIRECT_ALIGN
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self._size)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buffer)


class SparseTarget:
    """The restored file: only the given runs of each frame are written, so zero blocks
    stay holes. Long runs go with O_DIRECT (where the file system has it) from the pool's
    buffers straight to the device while the pool decodes the next frames: no copy into
    the page cache, no writeback left for the final fsync. Short runs are written through
    the page cache: a direct write waits for the device (~80 us here even for 4 KiB),
    a buffered one does not, and the final fsync writes them out together. WriteBehind
    keeps those dirty pages few."""

    def __init__(self, fd: int, chunk_size: int, allow_direct: bool = True) -> None:
        self._fd = fd
        # only if frames start on the alignment O_DIRECT needs
        aligned = chunk_size % DIRECT_ALIGN == 0
        self._can_direct = allow_direct and aligned and set_direct(fd, True)
        self._direct = self._can_direct  # what the file is set to now
        self._behind = WriteBehind(fd)

    def write(self, offset: int, data: mmap.mmap, runs: list[tuple[int, int]]) -> None:
        view = memoryview(data)
        for start, end in runs:
            self._pwrite(view[start:end], offset + start)

    def written(self, end: int) -> None:
        """Everything up to offset `end` has been written."""
        self._behind.written(end)

    def finish(self) -> None:
        """Make the data durable: return only after this the file may be renamed."""
        os.fsync(self._fd)
        self._set_direct(False)
        drop_cached(self._fd, 0, 0)

    def _pwrite(self, data: memoryview, offset: int) -> None:
        # (the end of a disk whose size is not a multiple of 4 KiB is unaligned)
        self._set_direct(len(data) >= _DIRECT_MIN and not (offset | len(data)) % DIRECT_ALIGN)
        while data:
            try:
                written = os.pwrite(self._fd, data, offset)
            except OSError as err:
                if err.errno != errno.EINVAL or not self._direct:
                    raise
                self._set_direct(False)  # O_DIRECT was accepted but these writes are not
                self._can_direct = False
                continue
            data = data[written:]
            offset += written

    def _set_direct(self, on: bool) -> None:
        on = on and self._can_direct
        if on == self._direct:
            return
        if set_direct(self._fd, on):
            self._direct = on
        elif on:
            self._can_direct = False  # stay buffered
        else:  # no way to write the unaligned end
            raise OSError(errno.EINVAL, "cannot switch O_DIRECT off")


_ZERO_BLOCK = zeros(SPARSE_BLOCK)


def data_runs(data: bytes | mmap.mmap, length: int) -> list[tuple[int, int]]:
    """The [start, end) runs of `data[:length]` that are not whole zero blocks of
    SPARSE_BLOCK bytes (counted from the start; a shorter last block counts as a block).
    Two strided slices take the first and the last byte of every block; only blocks
    where both are zero are compared with zeros in full (about one in 20 on a full
    file system, most of them zero blocks indeed), not every block in a Python loop."""
    blocks = length // SPARSE_BLOCK
    whole = blocks * SPARSE_BLOCK
    firsts = int.from_bytes(data[0:whole:SPARSE_BLOCK], "big")
    lasts = int.from_bytes(data[SPARSE_BLOCK - 1 : whole : SPARSE_BLOCK], "big")
    maybe_zero = (firsts | lasts).to_bytes(blocks, "big")  # byte i: block i's two bytes
    runs: list[tuple[int, int]] = []
    start = 0  # of the current run of data
    block = maybe_zero.find(0)
    while block >= 0:
        at = block * SPARSE_BLOCK
        if data[at : at + SPARSE_BLOCK] == _ZERO_BLOCK:
            if at > start:
                runs.append((start, at))
            start = at + SPARSE_BLOCK
        block = maybe_zero.find(0, block + 1)
    if whole < length and data[whole:length] == zeros(length - whole):
        length = whole
    if length > start:
        runs.append((start, length))
    return runs


def write_sparse(fd: int, offset: int, data: Buffer) -> None:
    """pwrite the non-zero blocks of `data`; zero blocks stay holes of the target."""
    block = data if isinstance(data, bytes) else bytes(data)  # a stored block: rare
    view = memoryview(block)
    for start, end in data_runs(block, len(block)):
        _pwrite_all(fd, view[start:end], offset + start)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written
