"""The host files a qcow2 image names in its own header: pure parsing of its first bytes.

A qcow2 image can name a backing file (read for every cluster the image does not hold)
and an external data file (holding all its data). qemu opens both by the path in the
header unless told otherwise, so a restored image from an untrusted backup could reach
any host file or device that way. Layout (big-endian, from qemu's docs/interop/qcow2.txt):

    0   magic "QFI\\xfb"           4   version (2 or 3)
    8   backing_file_offset (u64) 16   backing_file_size (u32, at most 1023)
    72  incompatible_features (u64, version 3; bit 2: external data file)
    100 header_length (u32, version 3; version 2 headers are 72 bytes)
    then header extensions: type (u32), length (u32), data padded to 8 bytes, until type 0;
    type 0x44415441 holds the external data file's name.
"""

import struct
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
HEAD_BYTES = 1 << 20  # what the caller reads: every header qemu-img writes fits far inside
MAX_NAME = 1023
DATA_FILE_EXTENSION = 0x44415441
EXTERNAL_DATA_BIT = 1 << 2
V2_HEADER_LENGTH = 72


@dataclass(frozen=True)
class ImageReferences:
    backing_file: str | None = None
    data_file: str | None = None  # "" when the header says there is one but names none


def qcow2_references(head: bytes) -> ImageReferences:
    """The backing and data files named by the qcow2 header at the start of `head`; none
    when `head` is not a qcow2 image (qemu then refuses it as qcow2)."""
    if len(head) < V2_HEADER_LENGTH or head[:4] != MAGIC:
        return ImageReferences()
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    backing = None
    if backing_offset:
        backing = _name(head, backing_offset, backing_size)
    data_file = None
    if version >= 3 and len(head) >= 104:
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        (header_length,) = struct.unpack_from(">I", head, 100)
        named = _data_file_extension(head, max(header_length, 104))
        if named is not None or incompatible & EXTERNAL_DATA_BIT:
            data_file = named or ""
    return ImageReferences(backing, data_file)


def _name(head: bytes, offset: int, size: int) -> str:
    if size > MAX_NAME or offset + size > len(head):
        return f"(a name at byte {offset} that cannot be read)"
    return head[offset : offset + size].decode("utf-8", errors="replace")


def _data_file_extension(head: bytes, offset: int) -> str | None:
    while offset + 8 <= len(head):
        kind, length = struct.unpack_from(">II", head, offset)
        if kind == 0:
            return None
        if kind == DATA_FILE_EXTENSION:
            return _name(head, offset + 8, length)
        offset += 8 + (length + 7) // 8 * 8
    return None
