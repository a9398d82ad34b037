"""A disk of a backup read at any offset: what the NBD export of a backup serves.

The index of a stream file or of a repository disk (random_access_index, as restore
opens it) says which frame holds each 4 MiB of the disk. A read decodes the frames that
cover it, each checked against the digest its index entry records (FrameDecoder), so a
damaged or missing chunk fails the read with CorruptBackup instead of answering wrong
bytes. Zero frames are answered as zeros without being read. A few decoded frames are
kept (CACHED_FRAMES), so that small reads in one frame decode it once and memory stays
bounded whatever the disk's size.
"""

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import DiskRecord
from virtbackup.core.streamformat import FrameEntry
from virtbackup.engine.datapath.frames import zeros
from virtbackup.engine.datapath.repository_reader import RepositoryDisk
from virtbackup.engine.datapath.restore import random_access_index
from virtbackup.engine.datapath.stream_reader import (
    FrameDecoder,
    FrameSource,
    StreamFrames,
    StreamIndex,
)
from virtbackup.engine.stores.backup_access import OpenedBackup

CACHED_FRAMES = 8  # decoded frames kept: 32 MiB with 4 MiB frames


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    zero: bool  # a zero frame: reads as zeros, stored as nothing


class DiskReader:
    """Reads of one disk of an opened backup, each byte checked; thread-safe."""

    def __init__(self, index: StreamIndex, frames: FrameSource, label: str) -> None:
        self.label = label
        self.size = index.header.data_size
        self._entries = index.entries
        self._frame_size = index.header.chunk_size
        self._decoder = FrameDecoder(index, frames, label)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def read_into(self, out: memoryview, offset: int) -> None:
        """Fill `out` with the disk's bytes from `offset`; CorruptBackup when a frame it
        covers cannot be read or does not match its digest."""
        if offset < 0 or offset + len(out) > self.size:
            raise ValueError(f"read of {len(out)} bytes at {offset} beyond {self.size}")
        done = 0
        while done < len(out):
            position = offset + done
            entry = self._entries[position // self._frame_size]
            start = position - entry.data_offset
            take = min(len(out) - done, entry.data_length - start)
            out[done : done + take] = self._frame(entry)[start : start + take]
            done += take

    def extents(self, offset: int, length: int) -> list[Extent]:
        """The frames covering [offset, offset + length), neighbours of a kind merged."""
        found: list[Extent] = []
        end = min(offset + length, self.size)
        position = offset
        while position < end:
            entry = self._entries[position // self._frame_size]
            take = min(end, entry.data_offset + entry.data_length) - position
            if found and found[-1].zero == entry.is_zero:
                last = found.pop()
                found.append(Extent(last.offset, last.length + take, last.zero))
            else:
                found.append(Extent(position, take, entry.is_zero))
            position += take
        return found

    def _frame(self, entry: FrameEntry) -> bytes:
        number = entry.data_offset // self._frame_size
        with self._lock:
            cached = self._cache.get(number)
            if cached is not None:
                self._cache.move_to_end(number)
                return cached
        out = bytearray(entry.data_length)
        # decoded outside the lock: liblz4 and hashlib let other requests run meanwhile
        data = bytes(out) if self._decoder.decode_into(entry, memoryview(out)) else None
        decoded = zeros(entry.data_length) if data is None else data
        with self._lock:
            self._cache[number] = decoded
            while len(self._cache) > CACHED_FRAMES:
                self._cache.popitem(last=False)
        return decoded


@contextmanager
def disk_reader(opened: OpenedBackup, target: str) -> Iterator[DiskReader]:
    """A reader of disk `target` of the opened backup, until the block ends."""
    disk = find_disk(opened, target)
    found = random_access_index(opened, disk)
    label = f"{target} of {opened.files.label}"
    if isinstance(found, RepositoryDisk):
        found.frames.check_zero_chunks(found.index, label)  # zero chunks are never read
        yield DiskReader(found.index, found.frames, label)
        return
    if found is None:
        raise UsageError(
            f"{label} is an encrypted or remote stream, which cannot be read at random",
            "restore it, or export it to a local directory first (virtbackup export --to)",
        )
    fd = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield DiskReader(found, StreamFrames(found, fd), label)
    finally:
        os.close(fd)


def find_disk(opened: OpenedBackup, target: str) -> DiskRecord:
    """The manifest's record of disk `target`; UsageError naming the disks it has."""
    for disk in opened.manifest.disks:
        if disk.target == target:
            return disk
    names = ", ".join(disk.target for disk in opened.manifest.disks)
    raise UsageError(f"backup {opened.files.label} has no disk {target}", f"it has {names}")
