"""Encoding one chunk into one LZ4 frame, and the prepared zero frames.

python-lz4 releases the GIL while it compresses, so these run on worker threads.
"""

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import lz4.frame

from virtbackup.core.streamformat import FRAME_DIGEST


@dataclass(frozen=True)
class EncodedChunk:
    frame: bytes
    digest: bytes  # FRAME_DIGEST of the uncompressed bytes
    is_zero: bool


def compress_frame(data: bytes) -> bytes:
    # One 4 MiB block per chunk, like `lz4`'s default: the same ratio as the seed
    # pipeline. The index holds sizes and digests, so the frame carries neither.
    return bytes(
        lz4.frame.compress(
            data,
            compression_level=0,
            block_size=lz4.frame.BLOCKSIZE_MAX4MB,
            content_checksum=False,
            store_size=False,
        )
    )


@lru_cache(maxsize=8)
def zeros(length: int) -> bytes:
    """A block of zeros, allocated once per length (hashing it needs no fresh memory)."""
    return bytes(length)


@lru_cache(maxsize=8)
def zero_chunk(length: int) -> EncodedChunk:
    """The frame for `length` zero bytes: compressed once, written for every zero chunk."""
    data = zeros(length)
    return EncodedChunk(compress_frame(data), frame_digest(data), is_zero=True)


def frame_digest(data: bytes) -> bytes:
    return hashlib.new(FRAME_DIGEST, data).digest()


def encode_chunk(data: bytes) -> EncodedChunk:
    """Compress a chunk read from the source; an all-zero chunk gets the prepared frame."""
    if data == zeros(len(data)):
        return zero_chunk(len(data))
    return EncodedChunk(compress_frame(data), frame_digest(data), is_zero=False)


def is_zero_frame(frame: bytes, length: int) -> bool:
    """Whether a stored frame is the prepared zero frame of this length (no decompression)."""
    return frame == zero_chunk(length).frame
