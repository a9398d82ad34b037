"""Reading a stream front to back from a pipe: the same bytes and the same checks as the
random-access reader, and every kind of damage named."""

import errno
import os
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from backup_helpers import MiB, cmp_files, disk_of, make_backup, most_random_frame
from harness.images import build_fs_image

from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.manifest import DiskRecord
from virtbackup.core.progress import NullProgress
from virtbackup.core.streamformat import FrameEntry
from virtbackup.engine.datapath.stream_reader import read_index, verify_stream
from virtbackup.engine.datapath.stream_sequential import (
    _BackgroundWriter,
    _Decoded,
    restore_sequential,
    verify_sequential,
)


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DiskRecord, Path]:
    """An ext4 image with holes, deleted data and a short last chunk, backed up."""
    work = tmp_path_factory.mktemp("seq")
    image = build_fs_image(work / "web1.raw", size=24 * MiB + 4097, content=5 * MiB).path
    result = make_backup(work / "dest", [disk_of(image)])
    (disk,) = result.manifest.disks
    return result.path / disk.file, disk, image


@contextmanager
def piped(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes through a pipe (`cat`), as age or rclone would hand them over."""
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    try:
        yield cat.stdout
    finally:
        cat.kill()
        cat.wait()
        cat.stdout.close()


def test_restore_from_a_pipe_is_byte_identical_and_sparse(
    backup: tuple[Path, DiskRecord, Path], tmp_path: Path
) -> None:
    stream, disk, image = backup
    target = tmp_path / "restored.raw"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with piped(stream) as pipe:
            digest = restore_sequential(pipe, disk, fd, "vda", NullProgress(), workers=2)
    finally:
        os.close(fd)
    assert digest == disk.digest
    assert cmp_files(image, target)
    assert os.stat(target).st_blocks <= os.stat(image).st_blocks


def test_verify_from_a_pipe_agrees_with_random_access(
    backup: tuple[Path, DiskRecord, Path],
) -> None:
    stream, disk, _image = backup
    with piped(stream) as pipe:
        sequential = verify_sequential(pipe, disk, "vda", NullProgress())
    assert sequential == verify_stream(read_index(stream, "vda"), "vda", NullProgress())
    assert sequential == disk.digest


def damaged(stream: Path, tmp_path: Path, how: str) -> Path:
    data = bytearray(stream.read_bytes())
    index = read_index(stream, "vda")
    data_frame = most_random_frame(stream)
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped-frame":
        data[data_frame.stored_offset + data_frame.stored_length // 2] ^= 0x40
    elif how == "flipped-index":
        data[index.index_offset + 40] ^= 0x01
    elif how == "appended":
        data += b"more"
    elif how == "swapped-frames":
        # two whole frames trade places: each decodes, but not where the index says
        first, second = [e for e in index.entries if not e.is_zero][:2]
        a = data[first.stored_offset : first.stored_offset + first.stored_length]
        b = data[second.stored_offset : second.stored_offset + second.stored_length]
        assert first.stored_offset + len(a) == second.stored_offset
        data[first.stored_offset : second.stored_offset + len(b)] = b + a
    elif how == "garbage-start":
        data[0:4] = struct.pack("<I", 0x12345678)
    elif how == "huge-block":  # the first block claims 2 GiB: never read into memory
        data[7:11] = struct.pack("<I", 0x7FFF_FFFF)
    elif how == "huge-index":  # an index far larger than the manifest's disk can need
        data[index.index_offset + 4 : index.index_offset + 8] = struct.pack("<I", 1 << 29)
    path = tmp_path / f"{how}.lz4"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "is truncated"),
        ("flipped-frame", "does not match its index entry"),
        ("flipped-index", "bad index"),
        ("appended", "goes on after its index"),
        ("swapped-frames", "does not match its index entry"),
        ("garbage-start", "is not a frame written by virtbackup"),
        ("huge-block", "holds a block larger than the format's"),
        ("huge-index", "starts an index of impossible size"),
    ],
)
def test_damage_is_named(
    backup: tuple[Path, DiskRecord, Path], tmp_path: Path, how: str, message: str
) -> None:
    stream, disk, _image = backup
    bad = damaged(stream, tmp_path, how)
    with pytest.raises(CorruptBackup, match=message), piped(bad) as pipe:
        verify_sequential(pipe, disk, "vda", NullProgress())


def _decoded(number: int) -> _Decoded:
    entry = FrameEntry(number, 1, number, 1, False, b"")
    return _Decoded(entry, bytes([number]))


def test_background_writer_writes_in_order_and_hands_on_a_failure() -> None:
    written: list[int] = []
    with _BackgroundWriter(lambda d: written.append(d.entry.data_offset)) as writer:
        for number in range(20):
            writer.put(_decoded(number))
    assert written == list(range(20))

    def failing(decoded: _Decoded) -> None:
        if decoded.entry.data_offset == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(decoded.entry.data_offset)

    written.clear()
    with pytest.raises(OSError, match="No space left"):
        with _BackgroundWriter(failing, depth=2) as writer:
            for number in range(50):
                writer.put(_decoded(number))
    assert written == [0, 1, 2]  # nothing after the failed write


def test_background_writer_stops_when_the_reading_fails() -> None:
    started = threading.Event()
    written: list[int] = []
    writer = _BackgroundWriter(lambda d: None, depth=4)

    def slow(decoded: _Decoded) -> None:
        started.set()
        writer._stopped.wait(120)  # the first write lasts until the restore has failed
        written.append(decoded.entry.data_offset)

    writer._write = slow
    with pytest.raises(CorruptBackup):
        with writer:
            for number in range(4):
                writer.put(_decoded(number))
            assert started.wait(120)
            raise CorruptBackup("the pipe broke")
    assert written == [0]  # the frames still queued were dropped
