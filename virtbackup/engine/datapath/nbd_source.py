"""A disk read over NBD (a pull backup job's export) as the chunk pipeline reads a file.

Which ranges hold data comes from the export's `base:allocation` context: a range that is
a hole or reads as zeros is not read. Which chunks of the grid changed since a checkpoint
comes from a dirty bitmap: a backup job's (`qemu:dirty-bitmap:backup-<target>`), or the
checkpoint's own bitmap that qemu-nbd serves for a shut-off image
(`qemu:dirty-bitmap:<checkpoint>`).
"""

from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters.nbd_export import ALLOCATION, DIRTY, ZERO, NbdExport


@dataclass(frozen=True)
class NbdLocation:
    """Where a disk is served: the unix socket and the export (the disk target);
    `changes`: the meta context of the changes since a checkpoint, when it is served."""

    socket: Path
    export: str
    changes: str | None = None

    @property
    def contexts(self) -> tuple[str, ...]:
        return (ALLOCATION,) if self.changes is None else (ALLOCATION, self.changes)


class NbdSource:
    """One export, open; satisfies chunk_pipeline.ReadableSource."""

    def __init__(self, location: NbdLocation) -> None:
        self.location = location
        self.export = NbdExport.connect(location.socket, location.export, location.contexts)
        self.size = self.export.size
        # (start, end) of each range with data, in order; asked once for the whole disk
        self._data = [
            (e.offset, e.offset + e.length)
            for e in self.export.extents(ALLOCATION, 0, self.size)
            if not e.flags & ZERO
        ]
        self._next = 0  # first range that may end after the last query's start

    def has_data(self, start: int, end: int) -> bool:
        """Whether [start, end) overlaps a range with data (queries in ascending order
        cost a step each; any order is answered right)."""
        if self._next and self._data[self._next - 1][1] > start:
            self._next = 0
        while self._next < len(self._data) and self._data[self._next][1] <= start:
            self._next += 1
        return self._next < len(self._data) and self._data[self._next][0] < end

    def read_into(self, data: memoryview, offset: int) -> None:
        self.export.read_into(data, offset)

    def unchanged_chunks(self, chunk_size: int) -> "AllBut":
        """The chunks of the grid without a byte written since the job's checkpoint."""
        return AllBut(self.changed_chunks(chunk_size))

    def changed_chunks(self, chunk_size: int) -> frozenset[int]:
        """The numbers of the grid's chunks that hold a byte written since the job's
        checkpoint."""
        changed: set[int] = set()
        if self.location.changes is None:
            return frozenset(range((self.size + chunk_size - 1) // chunk_size))
        for extent in self.export.extents(self.location.changes, 0, self.size):
            if extent.flags & DIRTY:
                first = extent.offset // chunk_size
                last = (extent.offset + extent.length - 1) // chunk_size
                changed.update(range(first, last + 1))
        return frozenset(changed)

    def close(self) -> None:
        self.export.close()


@dataclass(frozen=True)
class AllBut:
    """Every chunk number but the `changed` ones."""

    changed: frozenset[int]

    def __contains__(self, number: object) -> bool:
        return number not in self.changed
