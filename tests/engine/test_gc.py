"""Garbage collection of the repository: the protocol, with faults injected at its seams
(a touch between stat and rename, a rewrite while chunks are hidden, a killed gc's
leftovers, live and stale writers) over real chunk files, indexes and manifests."""

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from repository_helpers import (
    age_chunks,
    chunk_data,
    hidden,
    make_repository,
    names_of,
    store_chunks,
    stored,
    write_backup,
)

from virtbackup.core.backup_errors import StoreError
from virtbackup.core.repository_format import GC_HIDDEN_PREFIX, GC_LOCK_FILE
from virtbackup.engine.datapath.frames import decode_frame
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.gc import (
    GcResult,
    GcRunning,
    GcSettings,
    ReferencesUnreadable,
    collect_garbage,
    remove_dead_writers,
)
from virtbackup.engine.stores.local import LocalStore

NOW = GcSettings(grace=0, settle=0)
SHARED = chunk_data(1) + chunk_data(2)
OLD_IMAGE = SHARED + chunk_data(3) + chunk_data(4)  # 3 and 4 only in the old backup
NEW_IMAGE = SHARED + chunk_data(5)


def assert_restorable(store: ChunkStore, image: bytes) -> None:
    """Every chunk of `image` is stored and decodes to its bytes."""
    for number, name in enumerate(names_of(image)):
        data = image[number * (64 << 10) : (number + 1) * (64 << 10)]
        assert bytes(decode_frame(store.read(name, 1 << 20), len(data))) == data


@pytest.fixture
def two_backups(tmp_path: Path) -> Path:
    """web1 backed up twice; the older backup removed (as prune does); all chunks old."""
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    old = write_backup(dest, "web1", {"vda": OLD_IMAGE}, number=0)
    write_backup(dest, "web1", {"vda": NEW_IMAGE}, number=1)
    LocalStore(dest).remove("web1", old.name)
    age_chunks(ChunkStore(dest))
    return dest


def test_removes_chunks_only_removed_backups_used(two_backups: Path) -> None:
    store = ChunkStore(two_backups)
    only_old = set(names_of(OLD_IMAGE)) - set(names_of(NEW_IMAGE))
    assert only_old <= stored(store.root.parent)
    result = collect_garbage(two_backups, NOW)
    assert stored(store.root.parent) == set(names_of(NEW_IMAGE))
    assert (result.removed, result.kept, result.backups) == (2, 3, 1)
    assert result.removed_bytes > 0 and not result.missing
    assert hidden(store.root.parent) == []
    assert_restorable(store, NEW_IMAGE)
    assert collect_garbage(two_backups, NOW).removed == 0


def test_dry_run_changes_nothing_and_says_what_would_go(two_backups: Path) -> None:
    store = ChunkStore(two_backups)
    before = {name: status.st_mtime_ns for name, status in store.names()}
    result = collect_garbage(two_backups, GcSettings(grace=0, settle=0, dry_run=True))
    assert {name: status.st_mtime_ns for name, status in store.names()} == before
    assert (result.removed, result.kept) == (2, 3)
    assert hidden(store.root.parent) == []


def test_dry_run_can_count_backups_as_removed(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    old = write_backup(dest, "web1", {"vda": OLD_IMAGE}, number=0)
    write_backup(dest, "web1", {"vda": NEW_IMAGE}, number=1)
    age_chunks(ChunkStore(dest))
    settings = GcSettings(grace=0, dry_run=True, assume_removed=frozenset({("web1", old.name)}))
    assert collect_garbage(dest, settings).removed == 2
    assert collect_garbage(dest, GcSettings(grace=0, dry_run=True)).removed == 0


def test_grace_keeps_recently_used_chunks(two_backups: Path) -> None:
    result = collect_garbage(two_backups, GcSettings(grace=7200, settle=0))
    assert result.removed == 0
    assert len(stored(two_backups)) == 5


def test_touch_between_stat_and_rename_keeps_the_chunk(two_backups: Path) -> None:
    class TouchedAfterStat(ChunkStore):
        """A writer touches each chunk right after gc read its (old) mtime."""

        def names(self) -> Iterator[tuple[str, os.stat_result]]:
            for name, status in super().names():
                self.touch(name)
                yield name, status

    store = ChunkStore(two_backups)
    result = collect_garbage(two_backups, NOW, chunks=TouchedAfterStat(two_backups))
    assert result.removed == 0 and result.kept == 5
    assert len(stored(store.root.parent)) == 5 and hidden(store.root.parent) == []


def test_chunk_written_again_while_hidden_survives(two_backups: Path) -> None:
    """A writer's touch finds the chunk gone (gc hid it) and writes it again."""
    store = ChunkStore(two_backups)
    image = chunk_data(3)
    seen: list[bool] = []

    def writer_meanwhile(seconds: float) -> None:
        seen.append(store.touch(names_of(image)[0]))
        store_chunks(store, image)

    result = collect_garbage(two_backups, NOW, sleep=writer_meanwhile)
    assert seen == [False]
    assert result.removed == 2  # the hidden copy went; the rewritten one stays
    assert names_of(image)[0] in stored(store.root.parent)
    assert_restorable(store, image)
    assert hidden(store.root.parent) == []


def test_live_writer_older_than_gc_protects_its_chunks(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    store = make_repository(dest)
    with store.writer():
        store_chunks(store, OLD_IMAGE)  # a backup in progress: no index committed yet
        time.sleep(0.05)
        result = collect_garbage(dest, NOW)
        assert result.live_writers == 1 and result.removed == 0
        assert stored(store.root.parent) == set(names_of(OLD_IMAGE))
    time.sleep(0.05)
    assert collect_garbage(dest, NOW).removed == 4  # the backup never committed


def test_stale_writer_protects_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    store = make_repository(dest)
    with store.writer() as writer:
        store_chunks(store, OLD_IMAGE)
        time.sleep(0.05)
        stale = time.time() - 3600  # no heartbeat for an hour: killed, or on a dead host
        os.utime(writer.path, (stale, stale))
        result = collect_garbage(dest, NOW)
    assert result.live_writers == 0 and result.removed == 4
    assert stored(store.root.parent) == set()


def test_leftovers_of_a_killed_gc_are_put_back_or_removed(two_backups: Path) -> None:
    store = ChunkStore(two_backups)
    referenced, rewritten = names_of(NEW_IMAGE)[:2]
    garbage = (set(names_of(OLD_IMAGE)) - set(names_of(NEW_IMAGE))).pop()
    for name in (referenced, rewritten, garbage):
        os.link(store.path(name), store.path(name).with_name(GC_HIDDEN_PREFIX + name))
    for name in (referenced, garbage):
        os.unlink(store.path(name))
    result = collect_garbage(two_backups, NOW)
    assert result.restored == 2 and not result.missing
    assert hidden(store.root.parent) == []
    assert stored(store.root.parent) == set(names_of(NEW_IMAGE))
    assert_restorable(store, NEW_IMAGE)


def test_damaged_index_stops_gc_before_anything_is_removed(two_backups: Path) -> None:
    store = ChunkStore(two_backups)
    [backup] = LocalStore(two_backups).list_backups()
    index = Path(backup.path) / "vda.raw.idx"
    index.write_bytes(index.read_bytes().replace(b"a", b"b", 1))
    with pytest.raises(ReferencesUnreadable, match=f"backup web1/{backup.stamp}.*vda.raw.idx"):
        collect_garbage(two_backups, NOW)
    assert len(stored(store.root.parent)) == 5


@pytest.mark.parametrize("damage", ["manifest", "short index", "no index"])
def test_unreadable_backup_stops_gc(two_backups: Path, damage: str) -> None:
    [backup] = LocalStore(two_backups).list_backups()
    path = Path(backup.path)
    if damage == "manifest":
        (path / "manifest.json").write_text("{")
    elif damage == "short index":
        (path / "vda.raw.idx").write_bytes((path / "vda.raw.idx").read_bytes()[:-1])
    else:
        (path / "vda.raw.idx").unlink()
    with pytest.raises(ReferencesUnreadable, match="gc stopped before removing anything"):
        collect_garbage(two_backups, NOW)
    assert len(stored(two_backups)) == 5


def test_damaged_stream_backup_does_not_stop_gc(two_backups: Path) -> None:
    """A backup without an index references no chunk, readable or not."""
    damaged = two_backups / "db1" / "20250101T000000Z"
    damaged.mkdir(parents=True, mode=0o700)
    (damaged / "manifest.json").write_text("{")
    (damaged / "vda.raw.lz4").write_bytes(b"\x04\x22\x4d\x18")
    assert collect_garbage(two_backups, NOW).removed == 2


@pytest.mark.parametrize("replaced_by", [None, os.mkfifo], ids=["removed", "a FIFO"])
def test_missing_chunk_is_reported_naming_the_backup(
    two_backups: Path, replaced_by: Callable[[Path], None] | None
) -> None:
    """A chunk that is gone, or that is no regular file (what no reader can read)."""
    store = ChunkStore(two_backups)
    lost = names_of(NEW_IMAGE)[2]
    os.unlink(store.path(lost))
    if replaced_by is not None:
        replaced_by(store.path(lost))
    [backup] = LocalStore(two_backups).list_backups()
    for dry_run in (True, False):
        result = collect_garbage(two_backups, GcSettings(grace=0, settle=0, dry_run=dry_run))
        assert [(m.backup, m.chunk) for m in result.missing] == [(f"web1/{backup.stamp}", lost)]
        assert result.missing_count == 1


def test_a_second_gc_says_one_is_running(two_backups: Path) -> None:
    store = ChunkStore(two_backups)
    fd = os.open(store.root / GC_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(GcRunning, match="another gc is running"):
            collect_garbage(two_backups, NOW)
    finally:
        os.close(fd)
    assert len(stored(store.root.parent)) == 5


def test_old_temporary_files_go_young_ones_stay(two_backups: Path) -> None:
    store = ChunkStore(two_backups)
    directory = store.path(names_of(NEW_IMAGE)[0]).parent
    old, young = directory / ".tmp-dead-writer", directory / ".tmp-live-writer"
    old.write_bytes(b"half a chunk")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    young.write_bytes(b"being written")
    result = collect_garbage(two_backups, GcSettings(grace=600, settle=0))
    assert result.temporaries == 1
    assert not old.exists() and young.exists()


def test_temporary_files_a_killed_process_left_in_the_repository_root_go(
    two_backups: Path,
) -> None:
    """Killed while it read the filesystem's clock or wrote repository.json: nothing
    else would ever remove what it left."""
    store = ChunkStore(two_backups)
    left = [store.root / ".tmp-clock-0a1b2c3d4e5f6a7b", store.root / ".tmp-repository.json-0a1b"]
    for path in left:
        path.write_bytes(b"")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    result = collect_garbage(two_backups, GcSettings(grace=600, settle=0))
    assert result.temporaries == 2
    assert not any(map(os.path.lexists, left))
    assert store.exists()


def test_no_repository_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="holds no repository"):
        collect_garbage(tmp_path, NOW)


def test_clean_removes_registrations_of_dead_writers_of_this_host(tmp_path: Path) -> None:
    store = make_repository(tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(child.stdout)
    host = os.uname().nodename
    dead = store.writers / f"{host}-{dead_pid}-0a1b2c3d"
    alive = store.writers / f"{host}-{os.getpid()}-0a1b2c3d"
    other_host = store.writers / f"elsewhere-{dead_pid}-0a1b2c3d"
    for path in (dead, alive, other_host):
        path.write_text("1.0")
    assert remove_dead_writers(tmp_path, dry_run=True) == [dead.name]
    assert dead.exists()
    assert remove_dead_writers(tmp_path) == [dead.name]
    assert not dead.exists() and alive.exists() and other_host.exists()


def test_backup_removed_while_gc_marks_is_skipped(two_backups: Path) -> None:
    """A prune on another host removes a backup gc has listed but not read yet."""
    other = write_backup(two_backups, "web2", {"vda": chunk_data(9)}, number=2)
    age_chunks(ChunkStore(two_backups))

    class PrunedMeanwhile(ChunkStore):
        def touch(self, name: str) -> bool:
            if other.exists():
                LocalStore(two_backups).remove("web2", other.name)
            return super().touch(name)

    result = collect_garbage(two_backups, NOW, chunks=PrunedMeanwhile(two_backups))
    assert result.backups == 2 and result.removed == 3
    assert stored(two_backups) == set(names_of(NEW_IMAGE))


def test_nothing_is_removed_through_a_symbolic_link(two_backups: Path, tmp_path: Path) -> None:
    """A planted chunks/ff link to a directory outside DEST, and a planted hidden name
    that is a link: gc follows neither."""
    store = ChunkStore(two_backups)
    outside = tmp_path / "outside"
    outside.mkdir()
    # a prefix no real chunk uses (the backups hold a few chunks, 256 prefixes exist)
    prefix = next(p for p in (f"{n:02x}" for n in range(256)) if not (store.chunks / p).exists())
    victim = outside / (prefix + "0" * 62)
    victim.write_bytes(b"not a chunk")
    os.utime(victim, (0, 0))
    (store.chunks / prefix).symlink_to(outside)
    planted = store.chunks / "ab" / (GC_HIDDEN_PREFIX + "ab" + "1" * 62)
    planted.parent.mkdir(exist_ok=True)
    planted.symlink_to(victim)
    collect_garbage(two_backups, NOW)
    assert victim.read_bytes() == b"not a chunk"
    assert not os.path.lexists(planted)
    assert not os.path.lexists(store.chunks / "ab" / ("ab" + "1" * 62))


def test_a_fifo_among_the_writers_does_not_hang_gc(two_backups: Path) -> None:
    """A planted FIFO (or a link to one) in writers/ is no registration: gc reads none
    of them, so it neither blocks on opening it nor counts it as a live writer."""
    store = ChunkStore(two_backups)
    fifo = store.writers / "planted"
    os.mkfifo(fifo)
    (store.writers / "link").symlink_to(fifo)
    outcome: list[object] = []
    gc = threading.Thread(target=lambda: outcome.append(collect_garbage(two_backups, NOW)))
    gc.start()
    gc.join(10)
    while gc.is_alive():  # let each blocked open return before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        gc.join(0.1)
    assert outcome and isinstance(result := outcome[0], GcResult)
    assert result.live_writers == 0 and result.removed == 2


@pytest.mark.parametrize("started", ["0", "-inf", "nan"])
def test_a_heartbeat_from_the_future_holds_gc_back_for_no_longer_than_a_stale_one(
    two_backups: Path, started: str
) -> None:
    """A registration whose mtime is years ahead (a careless touch, a restored copy)
    would otherwise be live for ever and keep every chunk; one whose start is not a time
    would put the cutoff at minus infinity. Neither is a registration a writer makes."""
    store = ChunkStore(two_backups)
    planted = store.writers / "planted"
    planted.write_text(started)
    future = time.time() + 10 * 365 * 86400
    os.utime(planted, (future, future))
    result = collect_garbage(two_backups, NOW)
    assert result.live_writers == 0 and result.removed == 2
    assert stored(two_backups) == set(names_of(NEW_IMAGE))


@pytest.mark.parametrize("started", ["-inf", "nan"])
def test_a_start_that_is_not_a_time_is_no_live_writer(two_backups: Path, started: str) -> None:
    store = ChunkStore(two_backups)
    (store.writers / "planted").write_text(started)
    result = collect_garbage(two_backups, NOW)
    assert result.live_writers == 0 and result.removed == 2


def test_a_chunk_directory_that_is_a_file_holds_no_chunk(two_backups: Path) -> None:
    """chunks/ab/ replaced by a file: a dry run counts its chunks missing; gc stops in
    one line before removing anything."""
    store = ChunkStore(two_backups)
    lost = names_of(NEW_IMAGE)[0]
    directory = store.path(lost).parent
    shutil.rmtree(directory)
    directory.write_bytes(b"not a directory")
    result = collect_garbage(two_backups, GcSettings(grace=0, settle=0, dry_run=True))
    assert lost in {missing.chunk for missing in result.missing}
    before = stored(two_backups)
    with pytest.raises(StoreError, match="Not a directory"):
        collect_garbage(two_backups, NOW)
    assert stored(two_backups) == before
