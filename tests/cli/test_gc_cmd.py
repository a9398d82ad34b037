"""`virtbackup gc` and the gc `prune` runs, as real processes: kill -9 of gc while chunks
are hidden, of a backup while it is registered, a second gc, damaged backups."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.cli import virtbackup
from repository_helpers import (
    age_chunks,
    chunk_data,
    hidden,
    names_of,
    stored,
    wait_for,
    write_backup,
)

from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.gc import PAUSE_AFTER_RENAME_ENV

SHARED = chunk_data(1) + chunk_data(2)
OLD_IMAGE = SHARED + chunk_data(3) + chunk_data(4)
NEW_IMAGE = SHARED + chunk_data(5)
ONLY_OLD = set(names_of(OLD_IMAGE)) - set(names_of(NEW_IMAGE))
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """gc_grace = 0: every chunk no backup references goes at once."""
    path = tmp_path / "virtbackup.toml"
    path.write_text("gc_grace = 0\n")
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """web1 backed up twice, its chunks unused for an hour."""
    path = tmp_path / "dest"
    path.mkdir(mode=0o700)
    write_backup(path, "web1", {"vda": OLD_IMAGE}, number=0)
    write_backup(path, "web1", {"vda": NEW_IMAGE}, number=1)
    age_chunks(ChunkStore(path))
    return path


def gc_cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "virtbackup", "--config", str(config), "gc", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def gc_paused_with_chunks_hidden(dest: Path, config: Path) -> subprocess.Popen[str]:
    """The older backup removed by hand, a gc that holds still once it has hidden the
    chunks only that backup used."""
    old = dest / "web1" / "20250101T000000Z"
    for entry in old.iterdir():
        entry.unlink()
    old.rmdir()
    paused = gc_cli(config, "--dest", str(dest), env={PAUSE_AFTER_RENAME_ENV: "60"})
    try:
        wait_for(lambda: len(hidden(dest)) == len(ONLY_OLD))
    except BaseException:
        paused.kill()
        paused.communicate()
        raise
    return paused


def test_prune_dry_run_says_what_gc_would_free_then_prune_frees_it(
    dest: Path, config: Path
) -> None:
    args = ("--config", str(config), "prune", "--dest", str(dest), "--keep-last", "1")
    dry = virtbackup(*args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    document = json.loads(dry.stdout)
    assert document["retention"][0]["remove"] == ["20250101T000000Z"]
    assert document["gc"]["dry_run"] and document["gc"]["removed_chunks"] == len(ONLY_OLD)
    assert ONLY_OLD <= stored(dest) and (dest / "web1" / "20250101T000000Z").is_dir()

    text = virtbackup(*args, "--dry-run")
    assert "would free up to" in text.stdout and "nothing removed or touched" in text.stdout

    done = virtbackup(*args)
    assert done.returncode == 0, done.stderr
    assert f"removed {len(ONLY_OLD)} chunks" in done.stdout
    assert stored(dest) == set(names_of(NEW_IMAGE))


def test_gc_json_and_nothing_to_free(dest: Path, config: Path) -> None:
    result = virtbackup("--config", str(config), "gc", "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["removed_chunks"], document["kept_chunks"]) == (0, 5)
    assert document["backups"] == 2 and document["missing"] == []


def test_kill_9_of_gc_while_chunks_are_hidden(dest: Path, config: Path) -> None:
    paused = gc_paused_with_chunks_hidden(dest, config)
    try:
        second = virtbackup("--config", str(config), "gc", "--dest", str(dest))
        assert second.returncode == 3
        assert second.stderr.strip().splitlines() == [
            f"virtbackup: error: another gc is running on {dest}/.virtbackup-repository: "
            "wait for it to finish"
        ]
    finally:
        paused.send_signal(signal.SIGKILL)
        paused.communicate()
    assert paused.returncode == -signal.SIGKILL
    assert len(hidden(dest)) == len(ONLY_OLD)
    assert stored(dest) == set(names_of(NEW_IMAGE))

    after = virtbackup("--config", str(config), "gc", "--dest", str(dest), "--json")
    assert after.returncode == 0, after.stderr
    document = json.loads(after.stdout)
    assert document["restored_chunks"] == len(ONLY_OLD)
    assert document["removed_chunks"] == len(ONLY_OLD)
    assert hidden(dest) == [] and stored(dest) == set(names_of(NEW_IMAGE))


WRITER = """
import sys
from pathlib import Path
from repository_helpers import chunk_data, store_chunks
from virtbackup.engine.stores.chunk_store import ChunkStore

store = ChunkStore(Path(sys.argv[1]))
with store.writer():
    store_chunks(store, chunk_data(7) + chunk_data(8))
    print("written", flush=True)
    sys.stdin.read()
"""


def test_chunks_of_a_killed_backup_go_once_clean_removed_its_registration(
    dest: Path, config: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    backup = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(dest)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert backup.stdout is not None and backup.stdout.readline() == "written\n"
    backup.kill()
    backup.wait()
    left = set(names_of(chunk_data(7) + chunk_data(8)))
    kept = virtbackup("--config", str(config), "gc", "--dest", str(dest), "--json")
    assert json.loads(kept.stdout)["running_backups"] == 1  # not stale yet
    assert left <= stored(dest)

    state = tmp_path / "state"
    cleaned = virtbackup("clean", "--dest", str(dest), "--json", state_dir=state)
    assert cleaned.returncode == 0, cleaned.stderr
    [registration] = json.loads(cleaned.stdout)["writers"]
    assert registration.startswith(f"{socket.gethostname()}-{backup.pid}-")
    assert list(ChunkStore(dest).writers.iterdir()) == []
    time.sleep(0.05)
    gone = virtbackup("--config", str(config), "gc", "--dest", str(dest), "--json")
    assert json.loads(gone.stdout)["removed_chunks"] == 2
    assert not left & stored(dest)


def test_damaged_backup_stops_gc_with_one_line(dest: Path, config: Path) -> None:
    (dest / "web1" / "20250101T000000Z" / "vda.raw.idx").write_bytes(b"garbage\n")
    result = virtbackup("--config", str(config), "gc", "--dest", str(dest))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "virtbackup: error: gc stopped before removing anything: backup web1/20250101T000000Z"
    )
    assert len(stored(dest)) == 5


def test_missing_chunk_is_named_and_fails_the_run(dest: Path, config: Path) -> None:
    lost = names_of(NEW_IMAGE)[2]
    os.unlink(ChunkStore(dest).path(lost))
    result = virtbackup("--config", str(config), "gc", "--dest", str(dest))
    assert result.returncode == 1
    assert f"MISSING: chunk {lost} of backup web1/20250101T000100Z" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (),
            "virtbackup: error: no backup destination: "
            "give --dest DIR or set dest in the config file",
        ),
        (
            ("--dest", "/nonexistent"),
            "virtbackup: error: backup destination /nonexistent does not exist",
        ),
    ],
)
def test_usage_errors(args: tuple[str, ...], message: str) -> None:
    result = virtbackup("gc", *args)
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_dest_without_repository(tmp_path: Path) -> None:
    result = virtbackup("gc", "--dest", str(tmp_path))
    assert result.returncode == 1
    assert "holds no repository" in result.stderr


@pytest.mark.parametrize(
    ("description", "says"),
    [
        ("[" * 10000, "is not JSON"),
        ('{"format": "virtbackup-repository", "version": 1, "chunk_size": -5}', "chunk_size -5"),
        (
            '{"format": "virtbackup-repository", "version": 1, "chunk_size": 1e999}',
            "chunk_size inf",
        ),
    ],
    ids=["nested deep", "negative chunk size", "infinite chunk size"],
)
def test_a_damaged_repository_description_is_one_line(
    dest: Path, description: str, says: str
) -> None:
    before = stored(dest)
    (ChunkStore(dest).root / "repository.json").write_text(description)
    result = virtbackup("gc", "--dest", str(dest))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("virtbackup: error: repository description ") and says in line, line
    assert stored(dest) == before


@pytest.mark.parametrize("command", ["gc", "clean"])
def test_writers_that_is_no_directory_is_one_line(dest: Path, config: Path, command: str) -> None:
    """writers/ replaced by a file: which writers are live cannot be told; gc removes
    nothing, and neither command ends in a traceback."""
    writers = ChunkStore(dest).writers
    writers.rmdir()
    writers.write_text("not a directory\n")
    before = stored(dest)
    result = virtbackup("--config", str(config), command, "--dest", str(dest))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line == f"virtbackup: error: cannot list the writers in {writers}: Not a directory"
    assert stored(dest) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_chunks_are_hidden_puts_them_back(
    dest: Path, config: Path, signum: signal.Signals
) -> None:
    paused = gc_paused_with_chunks_hidden(dest, config)
    try:
        paused.send_signal(signum)
        _, err = paused.communicate(timeout=30)
    finally:
        paused.kill()
    assert paused.returncode == 130
    assert err.strip().splitlines()[-1].startswith("virtbackup: error: interrupted by SIG")
    assert hidden(dest) == [] and ONLY_OLD <= stored(dest)
