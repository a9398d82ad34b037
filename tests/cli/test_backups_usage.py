"""`backups` accounting: each backup's logical size and what removing it would free, and
`backups --summary` for the repository, in text and JSON."""

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import MiB, disk_of, make_backup
from harness.cli import virtbackup as run_cli
from repository_fixture import (
    RepositoryBackup,
    changed_image,
    random_image,
    stored_bytes,
    write_repository_backup,
)

from virtbackup.engine.stores.chunk_store import ChunkStore

SIZE = 5 * MiB + 4096


def _files_size(backup: Path) -> int:
    return sum(entry.stat().st_size for entry in backup.iterdir())


@pytest.fixture
def generations(tmp_path: Path) -> tuple[Path, RepositoryBackup, RepositoryBackup, Path]:
    """web1 twice (chunk 3 changed in between) and a stream backup of db1 beside them."""
    dest = tmp_path / "dest"
    first = random_image(tmp_path / "first.raw", SIZE, seed=1, zero_chunks=(1,))
    second = changed_image(first, tmp_path / "second.raw", chunk=3, seed=2)
    old = write_repository_backup(dest, {"vda": first}, datetime(2025, 3, 1, 2, tzinfo=UTC))
    new = write_repository_backup(dest, {"vda": second}, datetime(2025, 3, 2, 2, tzinfo=UTC))
    stream = make_backup(dest, [disk_of(first)], domain="db1").path
    return dest, old, new, stream


def _listed(dest: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("backups", "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    return {f"{b['domain']}/{b['stamp']}": b for b in json.loads(result.stdout)["backups"]}


def test_each_backup_frees_its_files_and_the_chunks_only_it_uses(
    generations: tuple[Path, RepositoryBackup, RepositoryBackup, Path],
) -> None:
    dest, old, new, stream = generations
    listed = _listed(dest)
    own_old = stored_bytes(dest, {old.chunks["vda"][3]})
    own_new = stored_bytes(dest, {new.chunks["vda"][3]})
    assert listed[old.label]["logical_size"] == listed[new.label]["logical_size"] == SIZE
    assert listed[old.label]["frees"] == _files_size(old.path) + own_old
    assert listed[new.label]["frees"] == _files_size(new.path) + own_new
    assert own_old > MiB  # random data: the chunk is stored uncompressed
    streamed = listed[f"db1/{stream.name}"]
    assert streamed["logical_size"] == SIZE and streamed["frees"] == streamed["size"]
    table = run_cli("backups", "--dest", str(dest), "web1")
    assert table.returncode == 0, table.stderr
    assert "logical" in table.stdout and "frees" in table.stdout
    assert "5.0 MiB" in table.stdout and "1.0 MiB" in table.stdout


def test_a_chunk_shared_with_another_domain_is_not_freed(
    generations: tuple[Path, RepositoryBackup, RepositoryBackup, Path], tmp_path: Path
) -> None:
    dest, old, _new, _stream = generations
    copy = write_repository_backup(
        dest, {"vda": tmp_path / "first.raw"}, datetime(2025, 3, 3, 2, tzinfo=UTC), "web2"
    )
    listed = _listed(dest)
    assert listed[old.label]["frees"] == _files_size(old.path)
    assert listed[copy.label]["frees"] == _files_size(copy.path)


def test_summary_in_text_and_json(
    generations: tuple[Path, RepositoryBackup, RepositoryBackup, Path],
) -> None:
    dest, old, new, _stream = generations
    names = set(old.chunks["vda"]) | set(new.chunks["vda"])
    result = run_cli("backups", "--dest", str(dest), "--summary", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["repository"]
    stored = stored_bytes(dest, names)
    assert summary == {
        "exists": True,
        "chunks": 7,
        "stored_bytes": stored,
        "logical_bytes": 2 * SIZE,
        "backups": 2,
        "dedup_ratio": 2 * SIZE / stored,
        "encrypted": {"chunks": 0, "stored_bytes": 0, "backups": 0},
    }
    text = run_cli("backups", "--dest", str(dest), "--summary")
    assert text.returncode == 0, text.stderr
    assert f"{2 * SIZE / stored:.2f}" in text.stdout and "10.0 MiB" in text.stdout
    wrong = run_cli("backups", "--dest", str(dest), "--summary", "web1")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr


def test_summary_of_a_destination_without_repository(tmp_path: Path) -> None:
    image = random_image(tmp_path / "small.raw", MiB, seed=3)
    dest = tmp_path / "dest"
    make_backup(dest, [disk_of(image)])
    result = run_cli("backups", "--dest", str(dest), "--summary", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["repository"]
    assert summary["exists"] is False and summary["chunks"] == 0
    assert summary["dedup_ratio"] is None


def test_a_damaged_index_withholds_every_repository_figure(
    generations: tuple[Path, RepositoryBackup, RepositoryBackup, Path],
) -> None:
    """A backup whose chunks cannot be read could share any of them with the others."""
    dest, old, new, stream = generations
    os.truncate(new.path / "vda.raw.idx", 10)
    listed = _listed(dest)
    assert listed[old.label]["frees"] is None and listed[new.label]["frees"] is None
    assert listed[f"db1/{stream.name}"]["frees"] == listed[f"db1/{stream.name}"]["size"]
    result = run_cli("backups", "--dest", str(dest), "--json")
    (problem,) = json.loads(result.stdout)["problems"]
    assert problem.startswith(f"{new.label}: ") and "the index has 10 bytes" in problem
    table = run_cli("backups", "--dest", str(dest))
    assert table.returncode == 0
    assert f"virtbackup: warning: {new.label}: " in table.stderr


def test_an_unreadable_manifest_beside_an_index_withholds_them_too(
    generations: tuple[Path, RepositoryBackup, RepositoryBackup, Path],
) -> None:
    dest, old, new, _stream = generations
    (new.path / "manifest.json").write_text("not json")
    listed = _listed(dest)
    assert listed[old.label]["frees"] is None
    assert listed[new.label]["logical_size"] is None
    assert ChunkStore(dest).exists()
