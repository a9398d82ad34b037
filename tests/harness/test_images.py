"""Image builders make real, checkable filesystems with live and deleted data."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from harness.images import MiB, allocated_bytes, build_fs_image, read_file_from_ext4


def test_raw_ext4_image_is_sparse_clean_and_holds_files(tmp_path: Path) -> None:
    image = build_fs_image(tmp_path / "a.raw", size=64 * MiB, content=4 * MiB, deleted=4 * MiB)
    assert image.path.stat().st_size == 64 * MiB
    # content + deleted data + metadata, far below the virtual size: the file is sparse
    assert 8 * MiB <= allocated_bytes(image.path) < 32 * MiB
    subprocess.run(["e2fsck", "-f", "-n", str(image.path)], check=True, capture_output=True)
    assert len(image.files) > 3
    name, digest = next(iter(image.files.items()))
    assert hashlib.sha256(read_file_from_ext4(image.path, name)).hexdigest() == digest


def test_deleted_data_stays_in_the_blocks(tmp_path: Path) -> None:
    with_garbage = build_fs_image(tmp_path / "g.raw", content=2 * MiB, deleted=8 * MiB)
    without = build_fs_image(tmp_path / "n.raw", content=2 * MiB, deleted=0)
    assert allocated_bytes(with_garbage.path) - allocated_bytes(without.path) >= 7 * MiB


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_qcow2_image(tmp_path: Path, fs: str) -> None:
    image = build_fs_image(tmp_path / "a.qcow2", fmt="qcow2", fs=fs, size=320 * MiB)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(image.path)],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 320 * MiB
    subprocess.run(["qemu-img", "check", str(image.path)], check=True, capture_output=True)
    assert not list(tmp_path.glob("*.build.raw"))
