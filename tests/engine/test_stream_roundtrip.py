"""Write streams from real images, read them back with stock lz4 and with restore."""

import os
import subprocess
from pathlib import Path

import pytest
from backup_helpers import (
    MiB,
    cmp_files,
    digest_by_coreutils,
    loop_device,
    restore_stream_file,
    write_stream_file,
)
from harness.images import allocated_bytes, build_fs_image

from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.stream_reader import read_index, verify_stream
from virtbackup.engine.datapath.stream_writer import StreamResult, write_stream


class CountingProgress:
    def __init__(self) -> None:
        self.total = 0
        self.advanced = 0
        self.done = 0

    def on_start(self, total: int, label: str) -> None:
        self.total = total

    def on_advance(self, nbytes: int) -> None:
        self.advanced += nbytes

    def on_done(self) -> None:
        self.done += 1


def _check_round_trip(
    source: Path, tmp_path: Path, result: StreamResult, stream: Path, chunk_size: int = 1 * MiB
) -> None:
    assert result.digest_name == f"sha256-{chunk_size // MiB}MiB-chunks"
    assert result.digest == digest_by_coreutils(stream, chunk_size)
    by_lz4 = tmp_path / "by-lz4"
    subprocess.run(["lz4", "-d", "-q", str(stream), str(by_lz4)], check=True)
    assert cmp_files(source, by_lz4)
    restored = tmp_path / "restored"
    assert restore_stream_file(stream, restored) == result.digest
    assert cmp_files(source, restored)
    if source.is_file():
        assert allocated_bytes(restored) <= allocated_bytes(source)
    assert verify_stream(read_index(stream, "vda"), "vda", NullProgress()) == result.digest


def test_sparse_raw_ext4_image(tmp_path: Path) -> None:
    image = build_fs_image(tmp_path / "web1.raw", size=64 * MiB, content=8 * MiB)
    stream = tmp_path / "vda.raw.lz4"
    progress = CountingProgress()
    with open(stream, "wb") as out:
        result = write_stream(image.path, out, progress, "vda", WriterOptions(1 * MiB))
    assert (progress.total, progress.advanced, progress.done) == (64 * MiB, 64 * MiB, 1)
    assert result.zero_frames > 0  # holes were not compressed
    assert result.bytes_read < 64 * MiB  # holes were not read
    assert result.stored_size == stream.stat().st_size
    _check_round_trip(image.path, tmp_path, result, stream)


def test_qcow2_image(tmp_path: Path) -> None:
    image = build_fs_image(tmp_path / "web1.qcow2", size=64 * MiB, fmt="qcow2", content=6 * MiB)
    stream = tmp_path / "vda.qcow2.lz4"
    result = write_stream_file(image.path, stream)
    _check_round_trip(image.path, tmp_path, result, stream)
    check = subprocess.run(["qemu-img", "check", str(tmp_path / "restored")], check=False)
    assert check.returncode == 0


def test_block_device(tmp_path: Path) -> None:
    image = build_fs_image(tmp_path / "lv.raw", size=32 * MiB, content=4 * MiB)
    stream = tmp_path / "vda.raw.lz4"
    with loop_device(image.path) as device:
        result = write_stream_file(device, stream)
        assert result.data_size == 32 * MiB
        _check_round_trip(device, tmp_path, result, stream)
    # zero blocks of the device still become holes on restore
    assert allocated_bytes(tmp_path / "restored") <= allocated_bytes(image.path)


@pytest.mark.parametrize("size", [0, 1, 4095, 3 * MiB + 17])
def test_odd_sizes_and_a_dense_file(tmp_path: Path, size: int) -> None:
    source = tmp_path / "odd.raw"
    source.write_bytes(os.urandom(size // 2) + bytes(size - size // 2))
    stream = tmp_path / "odd.lz4"
    result = write_stream_file(source, stream)
    assert result.data_size == size
    _check_round_trip(source, tmp_path, result, stream)


def test_zero_data_chunks_are_not_compressed(tmp_path: Path) -> None:
    source = tmp_path / "allocated-zeros.raw"
    source.write_bytes(bytes(4 * MiB))  # allocated, so SEEK_DATA sees data
    result = write_stream_file(source, tmp_path / "z.lz4")
    assert result.bytes_read == 4 * MiB
    assert result.zero_frames == result.frames == 4
    restored = tmp_path / "restored"
    restore_stream_file(tmp_path / "z.lz4", restored)
    assert restored.stat().st_size == 4 * MiB and allocated_bytes(restored) == 0


def test_default_grid_digest_is_what_coreutils_prints(tmp_path: Path) -> None:
    """The README's check command, on holes, data, allocated zeros and a short last chunk."""
    source = tmp_path / "mixed.raw"
    with open(source, "wb") as f:
        f.truncate(3 * 4 * MiB + 12345)  # a hole to begin with
        f.seek(4 * MiB + 100)
        f.write(os.urandom(MiB))  # data inside chunk 1
        f.seek(2 * 4 * MiB)
        f.write(bytes(4 * MiB))  # allocated zeros: chunk 2
        f.seek(3 * 4 * MiB + 10)
        f.write(b"tail")  # data in the short last chunk
    stream = tmp_path / "vda.raw.lz4"
    with open(stream, "wb") as out:
        result = write_stream(source, out, NullProgress(), "vda")
    assert (result.frames, result.zero_frames) == (4, 2)
    _check_round_trip(source, tmp_path, result, stream, chunk_size=4 * MiB)
    assert result.digest_name == "sha256-4MiB-chunks"
