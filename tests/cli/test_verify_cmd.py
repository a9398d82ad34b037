"""`virtbackup verify`: every digest rechecked; damage named by disk and offset, exit 1."""

import json
import os
from pathlib import Path

import pytest
from backup_helpers import MiB, disk_of, make_backup, most_random_frame
from harness.cli import virtbackup as run_cli
from harness.images import build_fs_image


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    image = build_fs_image(tmp_path / "web1.raw", size=32 * MiB, content=6 * MiB)
    return make_backup(tmp_path / "dest", [disk_of(image.path)]).path


def test_good_backup_is_ok_and_recorded(backup: Path) -> None:
    result = run_cli("verify", str(backup))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ok\t{backup}\n"
    record = json.loads((backup / "verified.json").read_text())
    assert record["ok"] is True
    listed = run_cli("backups", "--dest", str(backup.parent.parent), "--json")
    assert json.loads(listed.stdout)["backups"][0]["verified"]["ok"] is True


def test_flipped_byte_in_a_data_frame(backup: Path) -> None:
    stream = backup / "vda.raw.lz4"
    entry = most_random_frame(stream)
    assert entry.stored_length > entry.data_length * 0.9  # the deleted random data
    with open(stream, "r+b") as f:
        at = entry.stored_offset + entry.stored_length // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = run_cli("verify", str(backup))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"vda: the frame for disk offset {entry.data_offset} " in lines[0]
    assert f"(stored at byte {entry.stored_offset} of vda.raw.lz4)" in lines[0]
    assert "Traceback" not in result.stderr
    assert json.loads((backup / "verified.json").read_text())["ok"] is False


def test_truncated_stream(backup: Path) -> None:
    stream = backup / "vda.raw.lz4"
    os.truncate(stream, stream.stat().st_size // 2)
    result = run_cli("verify", str(backup))
    assert result.returncode == 1
    assert "vda: vda.raw.lz4 has a bad index (the file is truncated" in result.stderr


def test_several_backups_one_missing(backup: Path, tmp_path: Path) -> None:
    result = run_cli("verify", str(backup), str(tmp_path / "nope"))
    assert result.returncode == 1
    assert result.stdout == f"ok\t{backup}\n"
    assert f"backup {tmp_path / 'nope'} does not exist" in result.stderr


def test_corrupt_manifest(backup: Path) -> None:
    (backup / "manifest.json").write_text('{"tool": "virtbackup", "format_version": 7}')
    result = run_cli("verify", str(backup))
    assert result.returncode == 1
    assert "manifest.json is corrupt: format version 7 is not supported" in result.stderr
    assert "Traceback" not in result.stderr
