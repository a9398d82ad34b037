"""`virtbackup clean` without leftovers, with a journal it cannot read, with partials
and --skip-free work directories."""

import fcntl
import json
import os
import time
from pathlib import Path

from harness.cli import virtbackup


def test_nothing_to_clean(tmp_path: Path) -> None:
    result = virtbackup("--state-dir", str(tmp_path / "state"), "clean")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nothing to clean\n"
    as_json = json.loads(virtbackup("--state-dir", str(tmp_path), "clean", "--json").stdout)
    assert as_json["journals"] == 0 and as_json["problems"] == []


def test_an_unreadable_journal_is_reported_kept_and_fails(tmp_path: Path) -> None:
    journals = tmp_path / "journal"
    journals.mkdir()
    torn = journals / "UU.20240101T000000Z-aaaaaa.json"
    torn.write_text('{"format": "virtbackup-journal", "vers')
    result = virtbackup("--state-dir", str(tmp_path), "clean")
    assert result.returncode == 1
    assert "cannot read journal" in result.stderr and "left alone" in result.stderr
    assert torn.exists()


def test_partial_backups_of_dead_runs_are_listed_then_removed(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    partial = dest / "web" / ".20240101T000000Z.partial"
    partial.mkdir(parents=True)
    (partial / "vda.qcow2.lz4").write_bytes(b"half")
    complete = dest / "web" / "20231231T000000Z"
    complete.mkdir()
    state = str(tmp_path / "state")

    dry = virtbackup("--state-dir", state, "clean", "--dry-run", "--dest", str(dest))
    assert dry.returncode == 0, dry.stderr
    assert f"would remove partial backup {partial}" in dry.stdout
    assert partial.exists()

    done = virtbackup("--state-dir", state, "clean", "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert f"removed partial backup {partial}" in done.stdout
    assert not partial.exists() and complete.exists()


def test_skip_free_work_directories_of_dead_runs_go_too(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    dead, live, young = (dest / f".virtbackup-skip-free-{n}" for n in ("dead", "live", "young"))
    for workdir in (dead, live, young):
        workdir.mkdir()
        (workdir / "vda.raw").write_bytes(b"compacted copy")
    hour_ago = time.time() - 3600
    for workdir in (dead, live):
        os.utime(workdir, (hour_ago, hour_ago))
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)  # as a running backup holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    state = str(tmp_path / "state")
    try:
        dry = virtbackup("--state-dir", state, "clean", "--dry-run", "--dest", str(dest))
        assert dry.returncode == 0, dry.stderr
        assert f"would remove --skip-free work directory {dead}" in dry.stdout
        assert dead.exists()

        done = virtbackup("--state-dir", state, "clean", "--dest", str(dest), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["partials"] == [str(dead)]
        assert not dead.exists()
        assert live.exists() and young.exists()  # a live run's, and one just made
    finally:
        os.close(held)
