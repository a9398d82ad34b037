"""One NBD export, read through libnbd (python3-libnbd): its size, its extents in a meta
context and its bytes. The only module that imports `nbd`.

    export = NbdExport.connect(socket, "vda", (ALLOCATION, dirty_bitmap("vda")))
    export.extents(ALLOCATION, 0, export.size)    # [Extent(offset, length, flags), ...]
    export.read_into(view, offset)
    export.close()

A read of a range larger than READ_REQUEST is split into requests sent together and
awaited together, so that several are in flight on the one connection. The buffers the
requests read into are reused: libnbd 1.14's Python binding (Debian 12) keeps every
buffer handed to `aio_pread` alive, so a fresh one per request grew the process by the
size of everything read (6 GiB for one incremental backup of the 8 GiB reference).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from virtbackup.core.errors import VirtbackupError, missing_binding

ALLOCATION = "base:allocation"
HOLE = 1  # base:allocation flags: no storage behind the range
ZERO = 2  # the range reads as zeros
DIRTY = 1  # qemu:dirty-bitmap flag: written since the checkpoint
READ_REQUEST = 1 << 20
_STATUS_SPAN = 1 << 30  # bytes asked about in one block-status request


class NbdError(VirtbackupError):
    """The NBD server refused or failed a request, or cannot be reached."""


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    flags: int


def dirty_bitmap(target: str) -> str:
    """The meta context of an incremental backup job's changes on disk `target`."""
    return f"qemu:dirty-bitmap:backup-{target}"


def import_nbd() -> ModuleType:
    """The libnbd bindings (python3-libnbd)."""
    try:
        import nbd
    except ImportError as err:
        raise missing_binding("nbd", "python3-libnbd", err) from None
    module: ModuleType = nbd
    return module


class NbdExport:
    """A connection to one export, until close()."""

    def __init__(self, nbd: ModuleType, handle: Any, label: str) -> None:
        self._nbd = nbd
        self._handle = handle
        self.label = label
        self.size = int(handle.get_size())
        self._buffers: dict[int, list[Any]] = {}  # by size: those the requests reuse

    @classmethod
    def connect(cls, socket: Path, export: str, contexts: Sequence[str] = (ALLOCATION,)) -> Self:
        nbd = import_nbd()
        label = f"NBD export {export} at {socket}"
        handle = nbd.NBD()
        try:
            handle.set_export_name(export)
            for context in contexts:
                handle.add_meta_context(context)
            handle.connect_unix(str(socket))
            for context in contexts:
                if not handle.can_meta_context(context):
                    raise NbdError(f"{label} does not offer {context}")
            return cls(nbd, handle, label)
        except nbd.Error as err:
            _close(handle)
            raise NbdError(f"cannot read {label}: {err.string}") from None
        except BaseException:
            _close(handle)
            raise

    def close(self) -> None:
        try:
            self._handle.shutdown()
        except self._nbd.Error:
            pass  # the server went first: nothing left to say goodbye to
        _close(self._handle)

    def extents(self, context: str, offset: int, length: int) -> list[Extent]:
        """The extents of [offset, offset + length) in `context`, in order, covering it."""
        found: list[Extent] = []
        end = offset + length
        position = offset
        while position < end:
            got = _Collected(context)
            span = min(end - position, _STATUS_SPAN)
            try:
                self._handle.block_status(span, position, got.take)
            except self._nbd.Error as err:
                raise NbdError(f"cannot read the extents of {self.label}: {err.string}") from None
            if not got.extents or got.extents[0].length <= 0:
                raise NbdError(f"{self.label} answered no extent at byte {position}")
            for extent in got.extents:
                length = min(extent.length, end - extent.offset)
                if length <= 0:
                    break
                found.append(Extent(extent.offset, length, extent.flags))
            position = found[-1].offset + found[-1].length
        return found

    def read_into(self, data: memoryview, offset: int) -> None:
        """Fill `data` from the export at `offset`, its requests in flight together."""
        requests = []
        try:
            for number, start in enumerate(range(0, len(data), READ_REQUEST)):
                buffer = self._buffer(min(READ_REQUEST, len(data) - start), number)
                cookie = self._handle.aio_pread(buffer, offset + start)
                requests.append((start, buffer, cookie))
            for start, buffer, cookie in requests:
                while not self._handle.aio_command_completed(cookie):
                    self._handle.poll(-1)
                data[start : start + len(buffer)] = buffer.to_bytearray()
        except self._nbd.Error as err:
            raise NbdError(f"cannot read {self.label} at byte {offset}: {err.string}") from None

    def _buffer(self, size: int, number: int) -> Any:
        """The `number`th buffer of `size` bytes, made on first use (the sizes are few:
        READ_REQUEST, and the tails of a chunk size and of the disk's last chunk)."""
        pool = self._buffers.setdefault(size, [])
        while len(pool) <= number:
            pool.append(self._nbd.Buffer(size))
        return pool[number]


def _close(handle: Any) -> None:
    """Close the handle and its connection now (libnbd closes it when the object is
    deleted; releasing it at once frees the server's export for the job's end)."""
    handle.__del__()
    del handle._o


class _Collected:
    """The extents one block-status reply gives for one meta context."""

    def __init__(self, context: str) -> None:
        self.context = context
        self.extents: list[Extent] = []

    def take(self, meta: str, start: int, entries: list[int], err: object) -> int:
        if meta == self.context:
            at = start
            for index in range(0, len(entries) - 1, 2):
                self.extents.append(Extent(at, entries[index], entries[index + 1]))
                at += entries[index]
        return 0
