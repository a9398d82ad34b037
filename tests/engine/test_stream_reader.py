"""Restore's write path: which blocks are written, O_DIRECT and its buffered fallback."""

import errno
import fcntl
import os
import random
from pathlib import Path

import pytest
from backup_helpers import restore_stream_file, write_stream_file
from harness.images import allocated_bytes
from harness.real import unavailable

from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.engine.datapath import io_control, sparse_target, stream_reader
from virtbackup.engine.datapath.sparse_target import SPARSE_BLOCK, data_runs
from virtbackup.engine.datapath.stream_reader import FrameDecoder, StreamFrames, read_index

MiB = 1 << 20
BLOCK = SPARSE_BLOCK


def _runs_block_by_block(data: bytes) -> list[tuple[int, int]]:
    """What data_runs must return, the slow and obvious way."""
    runs: list[tuple[int, int]] = []
    for at in range(0, len(data), BLOCK):
        block = data[at : at + BLOCK]
        if block == bytes(len(block)):
            continue
        if runs and runs[-1][1] == at:
            runs[-1] = (runs[-1][0], at + len(block))
        else:
            runs.append((at, at + len(block)))
    return runs


def _patterned(length: int, seed: int) -> bytes:
    """Zeros with data written over them: whole blocks, single bytes at a block's first,
    last and middle byte (what the sampling must not miss), and runs across blocks."""
    rng = random.Random(seed)
    data = bytearray(length)
    for _ in range(rng.randint(0, 12)):
        if not length:
            break
        at = rng.randrange(length)
        end = min(length, at + rng.randint(1, 3 * BLOCK))
        data[at:end] = b"\x5a" * (end - at)
        block = rng.randrange(length) // BLOCK * BLOCK
        for inside in (0, BLOCK - 1, BLOCK // 2 + 1):
            if rng.random() < 0.3 and block + inside < length:
                data[block + inside] = rng.randint(1, 255)
    return bytes(data)


@pytest.mark.parametrize("length", [0, 1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 17, MiB])
@pytest.mark.parametrize("seed", range(6))
def test_data_runs_are_the_non_zero_blocks(length: int, seed: int) -> None:
    data = _patterned(length, seed)
    assert data_runs(data, length) == _runs_block_by_block(data)


def test_data_runs_look_only_at_the_given_length() -> None:
    data = bytes(3 * BLOCK) + b"beyond"
    assert data_runs(data, 3 * BLOCK) == []
    assert data_runs(data, 2 * BLOCK + 10) == []
    assert data_runs(data, len(data)) == [(3 * BLOCK, len(data))]


def _mixed_source(path: Path, size: int) -> bytes:
    """Holes, data, text, allocated zeros and lone bytes, in a file of `size` bytes."""
    rng = random.Random(size)
    data = bytearray(size)

    def put(at: int, piece: bytes) -> None:
        data[at : at + len(piece)] = piece[: max(0, size - at)]

    for at in range(0, size, 256 * 1024):
        kind = rng.randrange(4)
        if kind == 1:
            put(at, rng.randbytes(100_000))
        elif kind == 2:
            put(at + rng.randrange(200_000), b"text " * 10_000)
        elif kind == 3:
            put(at + 5, b"\x01")
    path.write_bytes(data)
    assert len(data) == size
    return bytes(data)


def _stream_of(source: Path, stream: Path, chunk_size: int) -> str:
    return write_stream_file(source, stream, chunk_size).digest


@pytest.fixture(params=["direct", "buffered"])
def write_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    mode: str = request.param
    switched: list[bool] = []

    def set_direct(fd: int, on: bool) -> bool:
        switched.append(on)
        return io_control.set_direct(fd, on) if mode == "direct" else False

    monkeypatch.setattr(sparse_target, "set_direct", set_direct)
    monkeypatch.setattr(stream_reader, "on_other_device", lambda _stream, _fd: True)
    return mode


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(8 * MiB, MiB), (8 * MiB + 3 * BLOCK + 17, 4 * MiB), (3 * MiB + 512, MiB + 512)],
    ids=["aligned", "odd-size", "odd-chunks"],
)
def test_restore_is_identical_and_sparse(
    tmp_path: Path, write_mode: str, size: int, chunk_size: int
) -> None:
    source = tmp_path / "source.raw"
    data = _mixed_source(source, size)
    stream = tmp_path / "vda.lz4"
    digest = _stream_of(source, stream, chunk_size)
    restored = tmp_path / "restored"
    assert restore_stream_file(stream, restored) == digest
    assert restored.read_bytes() == data
    touched = set()  # file system blocks that data was written to (frames cut the grid)
    for frame in range(0, size, chunk_size):
        for start, end in _runs_block_by_block(data[frame : frame + chunk_size]):
            touched.update(range((frame + start) // BLOCK, (frame + end - 1) // BLOCK + 1))
    # zero blocks stayed holes (one more block: the extent tree)
    assert allocated_bytes(restored) <= (len(touched) + 1) * BLOCK


def test_long_runs_go_direct_from_another_device_and_short_ones_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source.raw"
    data = bytearray(_mixed_source(source, 8 * MiB))
    data[MiB : 2 * MiB] = os.urandom(MiB)  # a long run
    for at in range(4 * MiB, 5 * MiB, 2 * BLOCK):  # 4 KiB of data, 4 KiB of zeros, ...
        data[at : at + 2 * BLOCK] = b"\x01" * BLOCK + bytes(BLOCK)
    source.write_bytes(data)
    probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    direct_io = io_control.set_direct(probe, True)
    os.close(probe)
    if not direct_io:
        unavailable("direct I/O", "the file system of the test directory refuses O_DIRECT")
    stream = tmp_path / "vda.lz4"
    digest = _stream_of(source, stream, 4 * MiB)
    real_pwrite = os.pwrite
    writes: list[tuple[int, bool]] = []

    def pwrite(fd: int, buffer: memoryview, offset: int) -> int:
        writes.append((len(buffer), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return real_pwrite(fd, buffer, offset)

    monkeypatch.setattr(sparse_target.os, "pwrite", pwrite)
    restored = tmp_path / "restored"
    assert restore_stream_file(stream, restored) == digest  # backup and target on one device
    assert restored.read_bytes() == data
    assert writes and not any(direct for _, direct in writes)

    writes.clear()
    monkeypatch.setattr(stream_reader, "on_other_device", lambda _stream, _fd: True)
    restored = tmp_path / "restored-elsewhere"
    assert restore_stream_file(stream, restored) == digest
    assert restored.read_bytes() == data
    assert any(length >= MiB for length, _ in writes) and (BLOCK, False) in writes
    assert all(direct == (length >= 256 * 1024) for length, direct in writes)


def test_direct_writes_fall_back_when_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system may take O_DIRECT on the file and refuse the writes themselves."""
    source = tmp_path / "source.raw"
    data = _mixed_source(source, 6 * MiB)[:MiB] + os.urandom(2 * MiB) + bytes(3 * MiB)
    source.write_bytes(data)
    stream = tmp_path / "vda.lz4"
    digest = _stream_of(source, stream, MiB)
    direct = {"on": False}

    def set_direct(fd: int, on: bool) -> bool:
        direct["on"] = on
        return True

    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, buffer: memoryview, offset: int) -> int:
        if direct["on"]:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, buffer, offset)

    monkeypatch.setattr(sparse_target, "set_direct", set_direct)
    monkeypatch.setattr(stream_reader, "on_other_device", lambda _stream, _fd: True)
    monkeypatch.setattr(sparse_target.os, "pwrite", pwrite)
    restored = tmp_path / "restored"
    assert restore_stream_file(stream, restored) == digest
    assert len(refused) == 1  # then it stays buffered
    assert restored.read_bytes() == data


def test_a_bad_frame_is_not_written(tmp_path: Path, write_mode: str) -> None:
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(MiB) + b"text " * 200_000)
    stream = tmp_path / "vda.lz4"
    _stream_of(source, stream, MiB)
    index = read_index(stream, "vda")
    second = index.entries[1]
    with open(stream, "r+b") as damaged:
        at = second.stored_offset + second.stored_length // 2
        damaged.seek(at)
        byte = damaged.read(1)[0]
        damaged.seek(at)
        damaged.write(bytes([byte ^ 0x10]))
    restored = tmp_path / "restored"
    with pytest.raises(CorruptBackup, match="disk offset 1048576"):
        restore_stream_file(stream, restored)
    assert restored.read_bytes()[MiB:] == bytes(restored.stat().st_size - MiB)


def test_decode_into_gives_each_frames_data(tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    mixed = bytearray(_mixed_source(source, 3 * MiB + 5))
    mixed[MiB : 2 * MiB] = bytes(MiB)  # one zero frame among them
    source.write_bytes(mixed)
    data = bytes(mixed)
    stream = tmp_path / "vda.lz4"
    _stream_of(source, stream, MiB)
    index = read_index(stream, "vda")
    assert [entry.is_zero for entry in index.entries][:3] == [False, True, False]
    out = memoryview(bytearray(MiB))
    with open(stream, "rb") as opened:
        decoder = FrameDecoder(index, StreamFrames(index, opened.fileno()), "vda")
        for entry in index.entries:
            span = data[entry.data_offset : entry.data_offset + entry.data_length]
            if decoder.decode_into(entry, out):
                assert out[: entry.data_length] == span
            else:
                assert entry.is_zero
                assert span == bytes(entry.data_length)
            decoder.check(entry)
