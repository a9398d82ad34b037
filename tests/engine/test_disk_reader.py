"""Reading a backup's disk at any offset (what `export --nbd` serves): the bytes of the
image, holes as zero extents, a damaged or missing chunk an error, memory bounded."""

import os
import random
import subprocess
from pathlib import Path

import pytest
from age_helpers import make_key_pair
from backup_helpers import MiB, disk_of, make_backup
from harness.cli import virtbackup
from repository_fixture import random_image
from repository_helpers import chunk_holding

from virtbackup.adapters import age
from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import LAYOUT_REPOSITORY
from virtbackup.engine.datapath.disk_reader import CACHED_FRAMES, Extent, disk_reader
from virtbackup.engine.stores.backup_access import open_backup
from virtbackup.engine.stores.local import LocalFiles

SIZE = 11 * MiB + 4096


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return random_image(tmp_path / "vda.raw", SIZE, seed=7, zero_chunks=(2, 3))


@pytest.mark.parametrize("layout", ["stream", LAYOUT_REPOSITORY])
def test_reads_anywhere_equal_the_image_and_zero_frames_are_zero_extents(
    image: Path, tmp_path: Path, layout: str
) -> None:
    backup = make_backup(tmp_path / "dest", [disk_of(image)], layout=layout).path
    data = image.read_bytes()
    picks = random.Random(3)
    with disk_reader(open_backup(LocalFiles(backup)), "vda") as reader:
        assert reader.size == SIZE
        for _ in range(200):
            offset = picks.randrange(SIZE)
            length = picks.randrange(1, min(3 * MiB, SIZE - offset) + 1)
            out = bytearray(length)
            reader.read_into(memoryview(out), offset)
            assert out == data[offset : offset + length]
            assert len(reader._cache) <= CACHED_FRAMES
        assert reader.extents(0, SIZE) == [
            Extent(0, 2 * MiB, False),
            Extent(2 * MiB, 2 * MiB, True),
            Extent(4 * MiB, SIZE - 4 * MiB, False),
        ]
        assert reader.extents(2 * MiB + 5, 10) == [Extent(2 * MiB + 5, 10, True)]
        with pytest.raises(ValueError):
            reader.read_into(memoryview(bytearray(2)), SIZE - 1)


def test_a_damaged_or_missing_chunk_fails_its_reads_and_no_other(
    image: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(image)], layout=LAYOUT_REPOSITORY).path
    data = image.read_bytes()
    damaged = chunk_holding(dest, data[5 * MiB : 6 * MiB].__eq__)
    stored = bytearray(damaged.read_bytes())
    stored[len(stored) // 2] ^= 1
    damaged.write_bytes(bytes(stored))
    os.unlink(chunk_holding(dest, data[8 * MiB : 9 * MiB].__eq__))
    with disk_reader(open_backup(LocalFiles(backup)), "vda") as reader:
        out = bytearray(MiB)
        reader.read_into(memoryview(out), 4 * MiB)
        assert out == data[4 * MiB : 5 * MiB]
        with pytest.raises(CorruptBackup, match="offset 5242880 .* does not match its digest"):
            reader.read_into(memoryview(bytearray(10)), 6 * MiB - 5)
        with pytest.raises(CorruptBackup, match="offset 8388608 .* is missing"):
            reader.read_into(memoryview(bytearray(10)), 8 * MiB)


def test_files_refuses_a_qcow2_disk_naming_a_host_file(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"")
    image = tmp_path / "vda.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(image)]
        + ["1M"],
        check=True,
    )
    backup = make_backup(tmp_path / "dest", [disk_of(image, fmt="qcow2")]).path
    result = virtbackup("files", str(backup), "ls", "/")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "virtbackup: error: vda is a qcow2 image that names the host file '/etc/shadow': "
        "restore it and inspect the image by hand"
    )


def test_an_encrypted_stream_cannot_be_read_at_random(image: Path, tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path / "keys")
    recipients = age.read_recipients(keys.recipients)
    backup = make_backup(tmp_path / "dest", [disk_of(image)], encrypt_to=recipients).path
    opened = open_backup(LocalFiles(backup), keys.identity)
    with pytest.raises(UsageError) as raised:
        with disk_reader(opened, "vda"):
            pass
    assert str(raised.value) == (
        f"vda of {backup} is an encrypted or remote stream, which cannot be read at random: "
        "restore it, or export it to a local directory first (virtbackup export --to)"
    )
