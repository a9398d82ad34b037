"""Image files through the real qemu-img: info, commit, allocation, hole punching."""

import os
import subprocess
from pathlib import Path

import pytest

from virtbackup.adapters import images
from virtbackup.adapters.images import UnreadableInfo, image_info
from virtbackup.core.errors import CommandFailed

MiB = 1024 * 1024


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_info_of_a_chain_names_every_image_below_the_top(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    middle = tmp_path / "middle.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "raw", str(base), "4M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(middle))
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(middle), "-F", "qcow2", str(top))

    info = image_info(str(top), "qcow2", force_share=True, backing_chain=True)
    assert (info.format, info.virtual_size, info.compat) == ("qcow2", 4 * MiB, "1.1")
    assert info.backing_file == str(middle)
    assert info.backing_chain == (str(middle), str(base))
    assert info.actual_size is not None and info.actual_size > 0

    alone = image_info(str(top), "qcow2", force_share=False)
    assert alone.backing_chain == () and alone.backing_file == str(middle)


def test_info_reads_an_old_qcow2_and_a_raw_file(tmp_path: Path) -> None:
    old = tmp_path / "old.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(old), "1M")
    assert image_info(str(old), "qcow2", force_share=True).compat == "0.10"
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(MiB))
    info = image_info(str(raw), None, force_share=True)
    assert (info.format, info.virtual_size, info.compat, info.extents) == ("raw", MiB, None, ())


def test_info_of_a_missing_image_is_a_command_failure(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="No such file"):
        image_info(str(tmp_path / "nothing.qcow2"), "qcow2", force_share=True)


def test_an_answer_that_is_not_the_documented_json_is_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(images.runner, "run_text", lambda argv, timeout: '{"format": "raw"}')
    with pytest.raises(UnreadableInfo, match="qemu-img info /x: unreadable output"):
        image_info("/x", "raw", force_share=True)


def test_commit_merges_an_overlay_into_its_backing_image(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay))
    command = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", str(overlay)]
    subprocess.run(command, check=True, capture_output=True)
    images.commit(str(overlay))
    assert base.read_bytes()[:4096] == b"\x5a" * 4096


def test_allocated_bytes_counts_what_the_file_holds(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as out:
        out.truncate(16 * MiB)
        out.write(b"\xff" * MiB)
        out.flush()
        os.fsync(out.fileno())
    held = images.allocated_bytes(str(sparse))
    assert held is not None and MiB <= held < 16 * MiB
    assert images.allocated_bytes("/dev/null") is None  # not a regular file
    with pytest.raises(FileNotFoundError):
        images.allocated_bytes(str(tmp_path / "gone"))


def test_hole_punching_is_tried_without_leaving_a_file(tmp_path: Path) -> None:
    assert images.punches_holes(tmp_path) is True  # ext4 or tmpfs here
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        images.punches_holes(tmp_path / "missing")
