"""One chunk as one LZ4 frame and back, and the prepared zero frames.

Frames are assembled here from LZ4 blocks (lz4.block) rather than made by lz4.frame:
- the frame header is a constant (version 1, independent blocks, no checksums, no content
  size, 4 MiB maximum block), so a frame is that header, one block per 4 MiB of the chunk
  (u32 size, bit 31 set for a block stored uncompressed) and a u32 end mark of 0;
- a chunk that does not compress is stored as is, straight from the read buffer;
- decoding knows each block's size from the index, so it decompresses into an output of
  exactly that size in one call (lz4.frame.decompress has to grow its output); restore
  decodes straight into its own reused buffer through liblz4's LZ4_decompress_safe (see
  decode_frame_into).
python-lz4 releases the GIL while it compresses and decompresses, and hashlib while it
hashes, so these run on worker threads; a frame is handed to the writer as a list of
buffers for one os.writev, never joined.
"""

import ctypes
import ctypes.util
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import lz4.block
import lz4.frame

from virtbackup.core.streamformat import zero_digest

MAX_BLOCK = 4 << 20  # LZ4 frame block maximum (block size id 7)
_BLOCK_SIZE = struct.Struct("<I")
_STORED = 0x8000_0000  # block size flag: the block is not compressed
END_MARK = bytes(4)

Buffer = bytes | bytearray | memoryview


class FrameError(ValueError):
    """A stored frame cannot be decoded; the message says why."""


@lru_cache(maxsize=1)
def frame_header() -> bytes:
    """Magic, FLG 0x60 (version 1, independent blocks, nothing optional), BD 0x70 (4 MiB
    blocks) and the header checksum, as liblz4 writes them for a 4 MiB frame."""
    sample = lz4.frame.compress(
        bytes(MAX_BLOCK),
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        content_checksum=False,
        store_size=False,
    )
    header = bytes(sample[:7])
    assert header[4:6] == b"\x60\x70", header.hex()
    return header


@dataclass(frozen=True)
class EncodedChunk:
    parts: tuple[Buffer, ...]  # the frame, in pieces for os.writev
    size: int  # bytes of the frame
    digest: bytes  # FRAME_DIGEST of the uncompressed bytes
    is_zero: bool

    def frame(self) -> bytes:
        return b"".join(self.parts)


# Levels as the lz4 tool counts them: up to 2 the fast mode, 3 to 12 LZ4HC (slower to
# write, smaller, decoded just as fast and by the same stock `lz4 -d`).
MAX_LEVEL = 12
_FIRST_HC_LEVEL = 3


def encode_frame(data: memoryview, level: int = 0) -> tuple[tuple[Buffer, ...], int]:
    """The frame of `data` as buffers (which may be slices of `data` itself) and its size."""
    parts: list[Buffer] = [frame_header()]
    size = len(parts[0]) + len(END_MARK)
    for start in range(0, len(data), MAX_BLOCK):
        piece = data[start : start + MAX_BLOCK]
        block: Buffer = (
            lz4.block.compress(piece, store_size=False)
            if level < _FIRST_HC_LEVEL
            else lz4.block.compress(
                piece, store_size=False, mode="high_compression", compression=level
            )
        )
        if len(block) >= len(piece):
            block, flag = piece, _STORED
        else:
            flag = 0
        parts += [_BLOCK_SIZE.pack(len(block) | flag), block]
        size += _BLOCK_SIZE.size + len(block)
    parts.append(END_MARK)
    return tuple(parts), size


@lru_cache(maxsize=8)
def zeros(length: int) -> bytes:
    """A block of zeros, allocated once per length (hashing it needs no fresh memory)."""
    return bytes(length)


@lru_cache(maxsize=8)
def zero_chunk(length: int) -> EncodedChunk:
    """The frame for `length` zero bytes: compressed once, written for every zero chunk."""
    parts, size = encode_frame(memoryview(zeros(length)))
    frame = b"".join(parts)
    return EncodedChunk((frame,), size, zero_digest(length), is_zero=True)


def is_zero_frame(frame: Buffer, length: int) -> bool:
    """Whether a stored frame is the prepared zero frame of this length (no decompression)."""
    prepared = zero_chunk(length).parts[0]
    # bytes == bytes is a memcmp; a memoryview compares item by item (~50x slower)
    return len(frame) == len(prepared) and bytes(frame) == prepared


def decode_frame(frame: bytes, length: int) -> Buffer:
    """The `length` bytes of a stored frame; FrameError if it is damaged. Frames of another
    layout (any valid LZ4 frame) are decoded with lz4.frame."""
    if not frame.startswith(frame_header()):
        return _decode_any_frame(frame, length)
    pieces = [_block_data(*block) for block in _blocks(frame, length)]
    if len(pieces) == 1:
        return pieces[0]
    return b"".join(pieces)


def decode_frame_into(frame: Buffer, length: int, out: memoryview) -> None:
    """Decode the `length` bytes of a stored frame into `out[:length]`; FrameError if it
    is damaged. When `frame` and `out` are writable buffers (restore reads frames into
    one of its own), blocks are decompressed in place by liblz4, with no intermediate
    bytes object and no copy; otherwise through python-lz4 and a copy."""
    if len(out) < length:
        raise ValueError(f"a buffer of {len(out)} bytes cannot take {length}")
    if bytes(frame[: len(frame_header())]) != frame_header():
        out[:length] = _decode_any_frame(frame, length)
        return
    at = 0
    for block, expected, stored in _blocks(frame, length):
        target = out[at : at + expected]
        if stored:
            target[:] = block
        else:
            _decompress_into(block, target)
        at += expected


def max_frame_size(length: int) -> int:
    """The largest frame encode_frame makes for `length` bytes (every block stored)."""
    blocks = -(-length // MAX_BLOCK)
    return len(frame_header()) + blocks * _BLOCK_SIZE.size + length + len(END_MARK)


def _blocks(frame: Buffer, length: int) -> Iterator[tuple[memoryview, int, bool]]:
    """Each block of one of our frames, the bytes it must decode to and whether it is
    stored uncompressed; FrameError if the frame does not hold `length` bytes."""
    view = memoryview(frame)
    at = len(frame_header())
    for start in range(0, length, MAX_BLOCK):
        expected = min(MAX_BLOCK, length - start)
        if at + _BLOCK_SIZE.size > len(frame):
            raise FrameError("it ends inside a block")
        (word,) = _BLOCK_SIZE.unpack_from(frame, at)
        at += _BLOCK_SIZE.size
        size = word & ~_STORED
        block = view[at : at + size]
        if size == 0 or len(block) != size:
            raise FrameError("it ends inside a block")
        at += size
        stored = bool(word & _STORED)
        if stored and size != expected:
            raise FrameError(f"a stored block holds {size} bytes instead of {expected}")
        yield block, expected, stored
    if frame[at:] != END_MARK:
        raise FrameError("it does not end after its blocks")


def _block_data(block: memoryview, expected: int, stored: bool) -> Buffer:
    if stored:
        return block
    try:
        data: bytes = lz4.block.decompress(block, uncompressed_size=expected)
    except Exception as err:  # python-lz4 raises ValueError naming the byte
        raise FrameError(f"cannot be decompressed ({err})") from None
    if len(data) != expected:
        raise FrameError(f"a block holds {len(data)} bytes instead of {expected}")
    return data


def _decompress_into(block: memoryview, out: memoryview) -> None:
    decompress = _lz4_decompress_safe()
    if decompress is None or block.readonly or out.readonly:
        out[:] = _block_data(block, len(out), stored=False)
        return
    produced = decompress(_address(block), _address(out), len(block), len(out))
    if produced < 0:  # liblz4 stopped at a malformed sequence
        raise FrameError(f"cannot be decompressed (LZ4 error {produced})")
    if produced != len(out):
        raise FrameError(f"a block holds {produced} bytes instead of {len(out)}")


def _address(view: memoryview) -> int:
    """Where a writable buffer's bytes are; valid while the object behind `view` lives."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@lru_cache(maxsize=1)
def _lz4_decompress_safe() -> Callable[[int, int, int, int], int] | None:
    """int LZ4_decompress_safe(const char* src, char* dst, int srcSize, int dstCapacity)
    from liblz4 (the library python-lz4 and the lz4 tool use): it never reads or writes
    beyond the sizes given and returns the bytes decoded or a negative error. ctypes
    releases the GIL for the call. None where the library cannot be loaded."""
    for name in ("liblz4.so.1", ctypes.util.find_library("lz4")):
        if not name:
            continue
        try:
            function = ctypes.CDLL(name).LZ4_decompress_safe
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        function.restype = ctypes.c_int
        decompress: Callable[[int, int, int, int], int] = function
        return decompress
    return None


def decode_chunk(frame: Buffer, max_length: int) -> bytes:
    """The data of one stored frame whose length is not known, only bounded (a chunk of
    the repository: the grid's size, or less at a disk's end); FrameError if it is
    damaged or holds more than `max_length` bytes."""
    return _decompress_frame(frame, max_length)


def _decode_any_frame(frame: Buffer, length: int) -> bytes:
    """Decode a frame of another writer, which must hold exactly `length` bytes."""
    data = _decompress_frame(frame, length)
    if len(data) < length:
        raise FrameError(f"holds {len(data)} bytes instead of {length}")
    return data


def _decompress_frame(frame: Buffer, limit: int) -> bytes:
    """Decode any valid LZ4 frame, never into more than `limit` bytes (+1 to tell a
    longer frame): a small crafted frame may expand to gigabytes."""
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        data = decompressor.decompress(frame, max_length=limit + 1)
    except Exception as err:  # python-lz4 raises RuntimeError with the LZ4F code
        raise FrameError(f"cannot be decompressed ({err})") from None
    if len(data) > limit:
        raise FrameError(f"holds more than {limit} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise FrameError("it does not end after its data")
    return bytes(data)
