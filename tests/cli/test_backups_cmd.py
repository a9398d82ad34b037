"""`virtbackup backups`: newest first, JSON for scripts, a table for people."""

import json
import os
import time
from pathlib import Path

from backup_helpers import MiB, disk_of, make_backup
from harness.cli import virtbackup as run_cli

from virtbackup.core.manifest import LAYOUT_REPOSITORY
from virtbackup.core.repository_format import REPOSITORY_DIR
from virtbackup.core.text import printable


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


def test_directories_that_are_not_backups_are_listed_with_their_problem(tmp_path: Path) -> None:
    """One stamp directory without a manifest, one with a FIFO in its place (read naively
    it blocks for ever), one manifest that is a symbolic link: each is listed with its
    problem, the real backups beside them are listed as ever, exit 0."""
    image = tmp_path / "small.raw"
    image.write_bytes(b"x" * 4096)
    dest = tmp_path / "dest"
    good = make_backup(dest, [disk_of(image)]).path
    other = make_backup(dest, [disk_of(image)], domain="db1").path
    os.mkfifo(good / "verified.json")  # not a record: the backup reads as never verified
    missing = dest / "web1" / "20250101T000000Z"
    missing.mkdir()
    fifo = dest / "db1" / "20250101T000000Z"
    fifo.mkdir()
    os.mkfifo(fifo / "manifest.json")
    linked = dest / "db1" / "20240101T000000Z"
    linked.mkdir()
    (linked / "manifest.json").symlink_to(other / "manifest.json")

    listed = run_cli("backups", "--dest", str(dest), "--json", timeout=60)
    assert listed.returncode == 0, listed.stderr
    problems = {b["path"]: b["problem"] for b in json.loads(listed.stdout)["backups"]}
    assert problems == {
        str(other): None,
        str(fifo): f"{fifo / 'manifest.json'} is a FIFO, not a regular file",
        str(linked): f"{linked / 'manifest.json'} is a symbolic link, not a regular file",
        str(good): None,
        str(missing): f"{missing} is not a backup (it has no manifest.json)",
    }

    table = run_cli("backups", "--dest", str(dest), timeout=60)
    assert table.returncode == 0, table.stderr
    rows = [line.split("│") for line in table.stdout.splitlines() if line.startswith("│ ")]
    firsts = [(r[1].strip(), r[2].strip(), r[10].strip()) for r in rows if r[1].strip()]
    assert [(domain, stamp) for domain, stamp, _ in firsts[1:3]] == [
        ("db1", "20250101T000000Z"),
        ("db1", "20240101T000000Z"),
    ]
    assert firsts[1][2].startswith("unreadable:")  # (the rest wraps; the JSON has it whole)
    assert firsts[4][:2] == ("web1", "20250101T000000Z")
    assert firsts[4][2].startswith("unreadable:")
    assert [verified for _, _, verified in firsts].count("never") == 2  # the real backups


def test_names_and_methods_are_shown_as_text_not_markup(tmp_path: Path) -> None:
    image = tmp_path / "small.raw"
    image.write_bytes(b"x" * 4096)
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(image)], domain="a[bold]b").path
    manifest = backup / "manifest.json"
    document = json.loads(manifest.read_text())
    document["method"] = "[/oops]"
    manifest.write_text(json.dumps(document))

    table = run_cli("backups", "--dest", str(dest), timeout=60)
    assert table.returncode == 0, table.stderr
    assert "a[bold]b" in table.stdout and "[/oops]" in table.stdout
    assert table.stderr == ""


def test_control_characters_in_names_never_reach_the_terminal(tmp_path: Path) -> None:
    """A directory in DEST (or a libvirt name) may hold ESC sequences or a bidi override:
    tables, warnings and error lines show them escaped."""
    image = tmp_path / "small.raw"
    image.write_bytes(b"x" * 4096)
    dest = tmp_path / "dest"
    name = "esc\x1b[31mRED\u202eevil"
    make_backup(dest, [disk_of(image)], domain=name)
    (dest / name / "20000101T000000Z").mkdir()  # not a backup: named in a warning

    for args in (["backups"], ["prune", "--keep-last", "1", "--dry-run"]):
        result = run_cli(*args, "--dest", str(dest), timeout=60)
        assert result.returncode == 0, result.stderr
        for output in (result.stdout, result.stderr):
            assert "\x1b" not in output and "\u202e" not in output
        assert "esc\\x1b[31mRED\\u202eevil" in result.stdout + result.stderr


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("web-01 .ä") == "web-01 .ä"
    assert printable("a\x1b[2Jb\u202ec\x7f\x85") == "a\\x1b[2Jb\\u202ec\\x7f\\x85"
    assert printable("one\nfake log line") == "one\\nfake log line"
    assert printable("cell\nwrap", keep_newlines=True) == "cell\nwrap"


def test_a_domain_name_is_never_a_path_out_of_dest(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    image = tmp_path / "small.raw"
    image.write_bytes(b"x" * MiB)
    make_backup(outside, [disk_of(image)])  # a backup of "web1" there
    for name in ("../outside/web1", str(outside / "web1"), "..", "a/b"):
        for command in (["backups"], ["prune", "--dry-run", "--keep-last", "1"]):
            result = run_cli(*command, "--dest", str(dest), name)
            assert result.returncode == 2, (command, name, result.stdout, result.stderr)
            assert "cannot be used as a directory name" in result.stderr
            assert "Traceback" not in result.stderr and "web1" not in result.stdout


def test_a_repository_description_it_cannot_read_still_lists_the_backups(tmp_path: Path) -> None:
    """A repository.json of a later version (or damaged): the backups are still listed,
    what removing one would free is not told, and the problem is said."""
    image = tmp_path / "small.raw"
    image.write_bytes(os.urandom(MiB))
    dest = tmp_path / "dest"
    stream = make_backup(dest, [disk_of(image)], domain="db1")
    repository = make_backup(dest, [disk_of(image)], layout=LAYOUT_REPOSITORY)
    description = dest / REPOSITORY_DIR / "repository.json"
    description.write_text('{"format": "virtbackup-repository", "version": 3}\n')
    listed = run_cli("backups", "--dest", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert [b["path"] for b in document["backups"]] == [str(stream.path), str(repository.path)]
    (problem,) = document["problems"]
    assert str(description) in problem and "version 3" in problem
