"""Frames made of LZ4 blocks: what stock lz4 decodes, and what decode_frame refuses."""

import os
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import lz4.frame
import pytest

from virtbackup.engine.datapath.frames import (
    MAX_BLOCK,
    FrameError,
    _lz4_decompress_safe,
    decode_frame,
    decode_frame_into,
    encode_frame,
    frame_header,
    is_zero_frame,
    zero_chunk,
)
from virtbackup.engine.datapath.stream_writer import encode_chunk

MiB = 1 << 20

TEXT = b"".join(b"line %d of some text that compresses\n" % n for n in range(200_000))


def _frame(data: bytes) -> bytes:
    parts, size = encode_frame(memoryview(data))
    frame = b"".join(parts)
    assert len(frame) == size
    return frame


@pytest.mark.parametrize(
    "data",
    [
        TEXT[: 4 * MiB],  # one compressed block
        os.urandom(MiB),  # stored as is: random data does not compress
        TEXT[: 3 * MiB] + os.urandom(5 * MiB) + b"x",  # 3 blocks, the 2nd stored
        b"\0" * 17,
    ],
    ids=["text", "random", "three-blocks", "tiny"],
)
def test_frames_decode_here_and_with_stock_lz4(data: bytes, tmp_path: Path) -> None:
    frame = _frame(data)
    assert bytes(decode_frame(frame, len(data))) == data
    assert lz4.frame.decompress(frame) == data
    stream = tmp_path / "x.lz4"
    stream.write_bytes(frame + frame)  # frames concatenate
    out = subprocess.run(["lz4", "-dc", str(stream)], capture_output=True, check=True).stdout
    assert out == data + data


@pytest.mark.parametrize(
    "data",
    [TEXT[: 4 * MiB], TEXT[: 3 * MiB] + os.urandom(5 * MiB) + b"x", b"\0" * 17],
    ids=["one-block", "three-blocks", "tiny"],
)
def test_decode_into_a_buffer(data: bytes) -> None:
    out = memoryview(bytearray(len(data) + 10))
    out[len(data) :] = b"\x01" * 10
    decode_frame_into(_frame(data), len(data), out)
    assert out[: len(data)] == data
    assert out[len(data) :] == b"\x01" * 10  # nothing beyond the length
    other = lz4.frame.compress(data)  # another writer's frame
    decode_frame_into(other, len(data), out)
    assert out[: len(data)] == data


@pytest.mark.parametrize(
    "data",
    [TEXT[: 4 * MiB], TEXT[: 3 * MiB] + os.urandom(5 * MiB) + b"x", b"\0" * 17],
    ids=["one-block", "three-blocks", "tiny"],
)
def test_decode_from_a_writable_buffer_goes_through_liblz4(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _lz4_decompress_safe() is not None  # liblz4.so.1: the library of the lz4 tool
    calls = []
    real = _lz4_decompress_safe()

    def counting(*args: int) -> int:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr("virtbackup.engine.datapath.frames._lz4_decompress_safe", lambda: counting)
    out = memoryview(bytearray(len(data) + 10))
    out[len(data) :] = b"\x01" * 10
    decode_frame_into(memoryview(bytearray(_frame(data))), len(data), out)
    assert out[: len(data)] == data
    assert out[len(data) :] == b"\x01" * 10
    assert calls  # not the python-lz4 path


def test_liblz4_path_refuses_a_block_of_the_wrong_length() -> None:
    data = TEXT[:MiB]
    frame = memoryview(bytearray(_frame(data + b"more")))
    out = memoryview(bytearray(MiB + 4))
    with pytest.raises(FrameError):
        decode_frame_into(frame, MiB + 3, out)  # the block decodes to more than that
    short = memoryview(bytearray(_frame(data)))
    with pytest.raises(FrameError):
        decode_frame_into(short, MiB + 4, out)  # ... or to less


def test_header_is_what_liblz4_writes() -> None:
    made = lz4.frame.compress(
        TEXT[: 4 * MiB],
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        content_checksum=False,
        store_size=False,
    )
    assert made.startswith(frame_header())
    assert len(frame_header()) == 7


def test_incompressible_chunk_is_stored_not_grown() -> None:
    data = os.urandom(MAX_BLOCK)
    frame = _frame(data)
    assert len(frame) == len(data) + 7 + 4 + 4  # header, block size, end mark


@pytest.mark.parametrize("length", [4 * MiB, 3 * MiB + 17, 100])
def test_zero_chunks_get_the_prepared_frame(length: int) -> None:
    buffer = bytearray(4 * MiB)
    buffer[length:] = b"\1" * (len(buffer) - length)  # beyond the chunk: ignored
    encoded = encode_chunk(buffer, length)
    assert encoded is zero_chunk(length)
    assert is_zero_frame(encoded.parts[0], length)
    buffer[length - 1] = 1
    assert not encode_chunk(buffer, length).is_zero


def test_frames_of_other_writers_still_decode() -> None:
    data = TEXT[: 2 * MiB]
    frame = lz4.frame.compress(data, content_checksum=True)  # not our header
    assert bytes(decode_frame(frame, len(data))) == data
    with pytest.raises(FrameError, match="holds more than 5 bytes"):
        decode_frame(frame, 5)
    with pytest.raises(FrameError, match="holds 2097152 bytes instead of 3145728"):
        decode_frame(frame, 3 * MiB)


def test_a_frame_of_another_writer_never_expands_beyond_its_length() -> None:
    """A crafted frame of a few KiB that would expand to 256 MiB is refused after
    decoding at most the frame's length (plus one byte)."""
    bomb = lz4.frame.compress(bytes(256 * MiB), content_checksum=True)
    assert len(bomb) < 2 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(FrameError, match="holds more than 4096 bytes"):
            decode_frame(bomb, 4096)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f[:-5], "ends inside a block|does not end"),
        (lambda f: f + b"junk", "does not end after its blocks"),
        (lambda f: f[:7] + bytes([f[7] ^ 0x01]) + f[8:], "ends inside a block|decompressed"),
        (lambda f: f[:7] + b"\0\0\0\0" + f[11:], "ends inside a block"),
    ],
    ids=["truncated", "trailing", "block-size", "empty-block"],
)
def test_damaged_frames(damage: Callable[[bytes], bytes], message: str) -> None:
    data = TEXT[:MiB]
    with pytest.raises(FrameError, match=message):
        decode_frame(damage(_frame(data)), len(data))
    with pytest.raises(FrameError, match=message):
        decode_frame_into(damage(_frame(data)), len(data), memoryview(bytearray(len(data))))
    with pytest.raises(FrameError, match=message):  # through liblz4
        writable = memoryview(bytearray(damage(_frame(data))))
        decode_frame_into(writable, len(data), memoryview(bytearray(len(data))))


def test_wrong_length_is_refused() -> None:
    data = TEXT[:MiB]
    with pytest.raises(FrameError, match="holds 1048576 bytes instead of 1048577"):
        decode_frame(_frame(data), MiB + 1)
