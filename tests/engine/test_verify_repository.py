"""verify --all-chunks / --sample: each chunk read once, each index checked, and every
problem one line naming the chunk and all the backups that use it."""

import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backup_helpers import MiB, disk_of, make_backup
from harness.cli import virtbackup as run_cli
from repository_fixture import (
    RepositoryBackup,
    changed_image,
    random_image,
    write_repository_backup,
)

from virtbackup.core.progress import NullProgress
from virtbackup.core.repository_format import chunk_path, zero_chunk_name
from virtbackup.engine.datapath.verify_repository import verify_repository
from virtbackup.engine.stores.chunk_store import ChunkStore

FIRST = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
SECOND = datetime(2025, 3, 2, 2, 0, tzinfo=UTC)


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Path, RepositoryBackup, RepositoryBackup]:
    """Two backups: web1 of an image with a zero chunk, web2 of a copy with chunk 3
    changed (chunks 0-2 and the zero chunk shared)."""
    dest = tmp_path / "dest"
    first = random_image(tmp_path / "web1.raw", 5 * MiB + 4096, seed=1, zero_chunks=(1,))
    second = changed_image(first, tmp_path / "web2.raw", chunk=3, seed=2)
    web1 = write_repository_backup(dest, {"vda": first}, FIRST)
    web2 = write_repository_backup(dest, {"vda": second}, SECOND, domain="web2")
    return dest, web1, web2


def _flip_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as chunk:
        chunk.seek(at)
        byte = chunk.read(1)
        chunk.seek(at)
        chunk.write(bytes([byte[0] ^ 0xFF]))


def test_a_sound_repository_is_read_once(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, web1, web2 = shared
    stored = {name for backup in (web1, web2) for name in backup.chunks["vda"]}
    check = verify_repository(dest, NullProgress())
    assert check.ok, check.problems
    assert check.chunks == check.chunks_read == len(stored) == 7
    assert check.backups == 2


def test_a_damaged_chunk_names_every_backup_that_uses_it(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, web1, web2 = shared
    name = web1.chunks["vda"][0]
    assert name in web2.chunks["vda"]
    _flip_byte(ChunkStore(dest).path(name), 4096)
    result = run_cli("verify", "--all-chunks", "--dest", str(dest))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"virtbackup: error: chunk {chunk_path(name)} is damaged: its data does not match "
        f"its name; used by {web1.label}, {web2.label}"
    ]
    assert result.stdout.startswith(f"FAILED\t{dest}: 7 of 7 chunks read")
    assert "Traceback" not in result.stderr


def test_a_missing_chunk_names_every_backup_that_uses_it(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, web1, web2 = shared
    zero = zero_chunk_name(1 * MiB)
    assert web1.chunks["vda"][1] == zero and zero in web2.chunks["vda"]
    os.unlink(ChunkStore(dest).path(zero))
    check = verify_repository(dest, NullProgress())
    assert check.problems == (
        f"chunk {chunk_path(zero)} is missing; used by {web1.label}, {web2.label}",
    )


def test_a_renamed_chunk_is_missing_and_the_name_it_took_is_damaged(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, web1, _web2 = shared
    chunk_store = ChunkStore(dest)
    name = web1.chunks["vda"][3]  # web1's own chunk
    other = name[:2] + "0" * 62 if name[2:] != "0" * 62 else name[:2] + "1" * 62
    os.rename(chunk_store.path(name), chunk_store.path(other))
    check = verify_repository(dest, NullProgress())
    assert check.problems == (
        f"chunk {chunk_path(other)} is damaged: its data does not match its name; used by "
        "no backup (remove it: a new backup would reuse it)",
        f"chunk {chunk_path(name)} is missing; used by {web1.label}",
    )


def test_an_undecodable_chunk_and_a_planted_link(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
    tmp_path: Path,
) -> None:
    dest, web1, web2 = shared
    chunk_store = ChunkStore(dest)
    truncated, linked = web2.chunks["vda"][3], web1.chunks["vda"][2]
    os.truncate(chunk_store.path(truncated), 100)
    outside = tmp_path / "outside"
    os.rename(chunk_store.path(linked), outside)
    os.symlink(outside, chunk_store.path(linked))  # never followed, never counted
    check = verify_repository(dest, NullProgress())
    assert check.chunks == 6
    assert check.problems == (
        f"chunk {chunk_path(truncated)} is damaged (it does not end after its data); "
        f"used by {web2.label}",
        f"chunk {chunk_path(linked)} is missing; used by {web1.label}, {web2.label}",
    )


def test_a_planted_giant_chunk_is_not_read_whole(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, _web1, web2 = shared
    name = web2.chunks["vda"][3]
    os.truncate(ChunkStore(dest).path(name), 1 << 40)  # sparse: 1 TiB that takes no space
    check = verify_repository(dest, NullProgress())
    assert check.problems == (
        f"chunk {chunk_path(name)} cannot be read (chunk {ChunkStore(dest).path(name)} is "
        f"larger than any chunk can be); used by {web2.label}",
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda index: index.unlink(), "the index is missing"),
        (lambda index: os.truncate(index, 68), "the index has 68 bytes"),
        (
            lambda index: index.write_bytes(index.read_bytes()[68:] + index.read_bytes()[:68]),
            "the index is not the one its manifest records",
        ),
        (
            lambda index: index.write_bytes(b"ab/ab" + b"0" * 62 + b"\n" + index.read_bytes()[68:]),
            "the index is not the one its manifest records",
        ),
        (
            lambda index: index.write_bytes((b"../../../../etc/passwd".ljust(67) + b"\n") * 6),
            "line 1 is not a chunk path",
        ),
    ],
    ids=["missing", "truncated", "reordered", "unknown-chunk", "hostile"],
)
def test_a_bad_index_is_named(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
    damage: Callable[[Path], object],
    message: str,
) -> None:
    dest, web1, _web2 = shared
    damage(web1.path / "vda.raw.idx")
    check = verify_repository(dest, NullProgress())
    assert len(check.problems) == 1
    assert check.problems[0].startswith(f"{web1.label}: {web1.path}/vda.raw.idx: {message}")


def test_an_unreadable_manifest_is_a_problem(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, web1, web2 = shared
    (web2.path / "manifest.json").write_text("{")
    stream = make_backup(dest, [disk_of(web1.path.parent.parent.parent / "web1.raw")], "db1")
    (stream.path / "manifest.json").write_text("{")  # not the repository's concern
    check = verify_repository(dest, NullProgress())
    assert check.backups == 1
    assert len(check.problems) == 1 and check.problems[0].startswith(f"{web2.label}: manifest")


def test_a_sample_reads_some_chunks_and_every_index(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, web1, _web2 = shared
    os.unlink(ChunkStore(dest).path(web1.chunks["vda"][3]))
    check = verify_repository(dest, NullProgress(), 50, random.Random(7))
    assert 0 < check.chunks_read < check.chunks == 6
    assert check.backups == 2
    assert check.problems == (
        f"chunk {chunk_path(web1.chunks['vda'][3])} is missing; used by {web1.label}",
    )


def test_sample_on_the_command_line(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup],
) -> None:
    dest, _web1, _web2 = shared
    result = run_cli("verify", "--sample", "100", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"ok\t{dest}: 7 of 7 chunks read, indexes of 2 backups checked, 0 problems\n"
    )
    for wrong in (
        ["--sample", "0"],
        ["--sample", "101"],
        ["--sample", "nan"],  # in no range, so in every range click checks
        ["--all-chunks", "--sample", "5"],
        ["--all-chunks", "--remote"],
        ["--all-chunks", str(dest / "web1")],
    ):
        result = run_cli("verify", *wrong, "--dest", str(dest))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr


def test_a_destination_without_repository(tmp_path: Path) -> None:
    result = run_cli("verify", "--all-chunks", "--dest", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"virtbackup: error: {tmp_path} holds no repository")
    assert len(result.stderr.strip().splitlines()) <= 2
    usage = run_cli("verify", "--dest", str(tmp_path))
    assert usage.returncode == 2 and "nothing to verify" in usage.stderr


def test_the_counts_are_what_is_on_disk_with_stream_backups_beside(
    shared: tuple[Path, RepositoryBackup, RepositoryBackup], tmp_path: Path
) -> None:
    """Stream backups (of a domain of the repository's and of another) add no chunk and
    no index to the counts: the chunks are the chunk files, the backups those with an
    index."""
    dest, web1, _web2 = shared
    image = tmp_path / "web1.raw"
    make_backup(dest, [disk_of(image)], "web1")  # beside web1's repository backup
    make_backup(dest, [disk_of(image)], "db1")
    files = [p for p in (dest / ".virtbackup-repository" / "chunks").rglob("*") if p.is_file()]
    check = verify_repository(dest, NullProgress())
    assert check.ok, check.problems
    assert check.chunks == check.chunks_read == len(files) == 7
    assert check.backups == 2
    listed = run_cli("verify", "--all-chunks", "--dest", str(dest))
    assert listed.stdout == (
        f"ok\t{dest}: 7 of 7 chunks read, indexes of 2 backups checked, 0 problems\n"
    )
