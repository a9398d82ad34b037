"""Repository backups a hostile or damaged DEST hands to the commands that read them:
each command says what is wrong in one line and exits 1, never a traceback."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backup_helpers import MiB
from harness.cli import virtbackup as run_cli
from repository_fixture import RepositoryBackup, random_image, write_repository_backup

NOW = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def backup(tmp_path: Path) -> RepositoryBackup:
    image = random_image(tmp_path / "vda.raw", 2 * MiB, seed=1)
    return write_repository_backup(tmp_path / "dest", {"vda": image}, NOW)


def assert_one_error_line(stderr: str, *expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("virtbackup: error: "), stderr
    assert all(text in lines[0] for text in expected), stderr


@pytest.mark.parametrize("command", ["verify", "restore", "export"])
def test_a_manifest_claiming_a_huge_disk_over_a_small_index(
    backup: RepositoryBackup, tmp_path: Path, command: str
) -> None:
    """The index size the manifest implies is a bound, not an amount to allocate: 4 EiB
    claimed means an index of 4 PiB, read into memory it would be."""
    path = backup.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["disks"][0]["byte_size"] = 1 << 62
    path.write_text(json.dumps(manifest))
    args = [command, str(backup.path)] + ([] if command == "verify" else ["--to", str(tmp_path)])
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert_one_error_line(result.stderr, "vda.raw.idx", "its disk needs")
