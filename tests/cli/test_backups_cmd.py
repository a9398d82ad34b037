"""`virtbackup backups`: newest first, JSON for scripts, a table for people."""

import json
import time
from pathlib import Path

from backup_helpers import MiB, disk_of, make_backup
from harness.cli import virtbackup as run_cli


def test_listing_json_and_table(tmp_path: Path) -> None:
    image = tmp_path / "small.raw"
    image.write_bytes(b"x" * MiB)
    dest = tmp_path / "dest"
    dest.mkdir()
    older = make_backup(dest, [disk_of(image)])
    time.sleep(1.1)
    newer = make_backup(dest, [disk_of(image)])
    other = make_backup(dest, [disk_of(image)], domain="db1")
    (dest / "web1" / ".20000101T000000Z.partial").mkdir()  # never listed

    listed = run_cli("backups", "--dest", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert [b["path"] for b in document["backups"]] == [
        str(other.path),
        str(newer.path),
        str(older.path),
    ]
    first = document["backups"][1]
    assert first["domain"] == "web1" and first["method"] == "offline"
    assert first["verified"] is None and first["problem"] is None
    assert first["size"] > first["disks"][0]["stored_size"]
    assert first["disks"][0]["digest_algorithm"] == "sha256-1MiB-chunks"

    only_web1 = json.loads(run_cli("backups", "--dest", str(dest), "web1", "--json").stdout)
    assert len(only_web1["backups"]) == 2

    table = run_cli("backups", "--dest", str(dest))
    assert table.returncode == 0
    assert "web1" in table.stdout and "never" in table.stdout


def test_unreadable_manifest_is_listed_not_fatal(tmp_path: Path) -> None:
    image = tmp_path / "small.raw"
    image.write_bytes(b"x" * 4096)
    backup = make_backup(tmp_path / "dest", [disk_of(image)]).path
    (backup / "manifest.json").write_text("{")
    document = json.loads(run_cli("backups", "--dest", str(tmp_path / "dest"), "--json").stdout)
    assert "not valid JSON" in document["backups"][0]["problem"]


def test_missing_destination(tmp_path: Path) -> None:
    result = run_cli("backups", "--dest", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "backup destination" in result.stderr and "does not exist" in result.stderr
