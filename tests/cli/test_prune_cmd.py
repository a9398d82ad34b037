"""`virtbackup prune`: retention over real backup directories, with --dry-run."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_helpers import disk_of, make_backup

from virtbackup.adapters.store import BackupStore


def virtbackup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtbackup", "--config", "/dev/null", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def backups_over_days(dest: Path, image: Path, days: int) -> list[str]:
    """One backup a day, dated by their manifests; returns the stamps, oldest first."""
    stamps = []
    first = datetime(2026, 3, 1, 1, 30, tzinfo=UTC)
    for day in range(days):
        result = make_backup(dest, [disk_of(image)], domain="web1")
        # give the backup the time of a nightly run `day` days after the first
        manifest = result.path / "manifest.json"
        document = json.loads(manifest.read_text())
        moment = (first + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
        document["started"] = document["finished"] = moment
        manifest.write_text(json.dumps(document))
        stamps.append(result.path.name)
    return stamps


def test_dry_run_removes_nothing_then_prune_keeps_the_policy(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(64 * 1024))
    dest = tmp_path / "dest"
    stamps = backups_over_days(dest, image, 5)
    (dest / "web1" / ".20260101T000000Z.partial").mkdir()  # another run's work: never touched
    (dest / "web1" / "notes").mkdir()  # unknown: never touched

    dry = virtbackup("prune", "--dest", str(dest), "--keep-last", "2", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (decision,) = json.loads(dry.stdout)
    assert decision["remove"] == stamps[2::-1]
    assert len(BackupStore(dest).list_backups("web1")) == 5

    done = virtbackup("prune", "--dest", str(dest), "web1", "--keep-last", "2")
    assert done.returncode == 0, done.stderr
    left = sorted(p.name for p in (dest / "web1").iterdir())
    assert left == sorted([".20260101T000000Z.partial", "notes", stamps[3], stamps[4]])


def test_the_newest_backup_survives_any_policy(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4096))
    dest = tmp_path / "dest"
    stamps = backups_over_days(dest, image, 3)
    result = virtbackup("prune", "--dest", str(dest), "--keep-last", "0", "--keep-daily", "0")
    assert result.returncode == 2  # an all-zero policy is no policy
    assert "no retention policy for web1" in result.stderr
    result = virtbackup("prune", "--dest", str(dest), "--keep-yearly", "1")
    assert result.returncode == 0, result.stderr
    assert [b.stamp for b in BackupStore(dest).list_backups("web1")] == [stamps[-1]]


def test_unreadable_manifest_is_kept(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4096))
    dest = tmp_path / "dest"
    stamps = backups_over_days(dest, image, 3)
    (dest / "web1" / stamps[0] / "manifest.json").write_text("{broken")
    result = virtbackup("prune", "--dest", str(dest), "--keep-last", "1", "--json")
    assert result.returncode == 0, result.stderr
    (decision,) = json.loads(result.stdout)
    assert decision["unreadable_kept"] == [stamps[0]]
    assert sorted(p.name for p in (dest / "web1").iterdir()) == sorted([stamps[0], stamps[2]])


def test_no_policy_and_no_dest_are_usage_errors(tmp_path: Path) -> None:
    assert virtbackup("prune", "--keep-last", "1").returncode == 2
    (tmp_path / "d").mkdir()
    assert virtbackup("prune", "--dest", str(tmp_path / "d"), "x").returncode == 2


def test_a_domain_without_a_policy_stops_prune_before_anything_is_removed(
    tmp_path: Path,
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(64 * 1024))
    dest = tmp_path / "dest"
    backups_over_days(dest, image, 3)  # web1, which has a policy
    make_backup(dest, [disk_of(image)], domain="www")  # sorted after it, and has none
    config = tmp_path / "virtbackup.toml"
    config.write_text('[domain."web1".retention]\nkeep_last = 1\n')
    result = subprocess.run(
        [sys.executable, "-m", "virtbackup", "--config", str(config), "prune", "--dest", str(dest)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no retention policy for www" in result.stderr
    assert len(BackupStore(dest).list_backups("web1")) == 3
