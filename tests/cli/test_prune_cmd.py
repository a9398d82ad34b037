"""`virtbackup prune`: retention over real backup directories, with --dry-run."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_helpers import disk_of, make_backup

from virtbackup.engine.stores.local import LocalStore


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
    assert len(LocalStore(dest).list_backups("web1")) == 5

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
    assert [b.stamp for b in LocalStore(dest).list_backups("web1")] == [stamps[-1]]


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
    assert len(LocalStore(dest).list_backups("web1")) == 3


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_failed_newest_backup_does_not_cost_the_good_one(tmp_path: Path) -> None:
    """The newest backup is damaged and `verify` says so: --keep-last 1 keeps the good
    one before it (and the failed one, having no newer good backup), removes the rest."""
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(256 * 1024))
    dest = tmp_path / "dest"
    stamps = backups_over_days(dest, image, 3)
    stream = dest / "web1" / stamps[2] / "vda.raw.lz4"
    stream.write_bytes(stream.read_bytes()[: stream.stat().st_size // 2])
    verified = virtbackup("verify", str(dest / "web1" / stamps[2]))
    assert verified.returncode == 1
    assert json.loads((stream.parent / "verified.json").read_text())["ok"] is False

    result = virtbackup("prune", "--dest", str(dest), "--keep-last", "1", "--json")
    assert result.returncode == 0, result.stderr
    (decision,) = json.loads(result.stdout)
    assert decision["keep"] == [
        {"backup": stamps[2], "reasons": ["failed verification, no newer good backup"]},
        {"backup": stamps[1], "reasons": ["last 1/1"]},
    ]
    assert decision["remove"] == [stamps[0]]
    assert sorted(p.name for p in (dest / "web1").iterdir()) == sorted(stamps[1:])

    # a newer good backup arrives: now the failed one goes, the good ones by the policy
    newest = make_backup(dest, [disk_of(image)], domain="web1").path.name
    table = virtbackup("prune", "--dest", str(dest), "--keep-last", "1")
    assert table.returncode == 0, table.stderr
    assert sorted(p.name for p in (dest / "web1").iterdir()) == [newest]


def test_a_directory_that_is_not_a_backup_is_left_alone_and_the_others_pruned(
    tmp_path: Path,
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4096))
    dest = tmp_path / "dest"
    stamps = backups_over_days(dest, image, 3)
    other = [make_backup(dest, [disk_of(image)], domain="db1").path.name for _ in range(2)]
    empty = dest / "web1" / "20250101T000000Z"
    empty.mkdir()
    (empty / "vda.raw.lz4").write_bytes(b"left over")
    fifo_dir = dest / "db1" / "20250101T000000Z"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "manifest.json")  # read naively, this blocks for ever

    result = virtbackup("prune", "--dest", str(dest), "--keep-last", "1", "--json")
    assert result.returncode == 0, result.stderr
    decisions = {d["domain"]: d for d in json.loads(result.stdout)}
    assert decisions["web1"]["unreadable_kept"] == [empty.name]
    assert decisions["web1"]["problems"] == {
        empty.name: f"{empty} is not a backup (it has no manifest.json)"
    }
    assert decisions["db1"]["problems"] == {
        fifo_dir.name: f"{fifo_dir / 'manifest.json'} is a FIFO, not a regular file"
    }
    warnings = [line for line in result.stderr.splitlines() if "left alone by retention" in line]
    assert len(warnings) == 2, result.stderr
    assert any(f"web1: {empty} is not a backup" in line for line in warnings)
    assert tree(dest) == sorted(
        [
            "web1",
            f"web1/{stamps[2]}",
            *(f"web1/{stamps[2]}/{f.name}" for f in (dest / "web1" / stamps[2]).iterdir()),
            f"web1/{empty.name}",
            f"web1/{empty.name}/vda.raw.lz4",
            "db1",
            f"db1/{other[1]}",
            *(f"db1/{other[1]}/{f.name}" for f in (dest / "db1" / other[1]).iterdir()),
            f"db1/{fifo_dir.name}",
            f"db1/{fifo_dir.name}/manifest.json",
        ]
    )
    assert (empty / "vda.raw.lz4").read_bytes() == b"left over"
