"""Backups in the repository layout: chunks stored once, restored byte for byte, sparse."""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from backup_helpers import MiB, cmp_files, disk_of, make_backup, small_filesystem
from harness.images import build_fs_image

from virtbackup.core.backup_errors import CorruptBackup, DiskBackupFailed, StoreError
from virtbackup.core.manifest import LAYOUT_REPOSITORY, DiskRecord, Manifest, build_manifest
from virtbackup.core.progress import NullProgress
from virtbackup.core.repository_format import (
    REPOSITORY_DIR,
    RepositoryConfig,
    chunk_count,
    parse_index,
    zero_chunk_name,
)
from virtbackup.engine.datapath import chunk_writer
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.chunk_writer import RepositoryBackup, Unchanged
from virtbackup.engine.datapath.restore import restore_backup
from virtbackup.engine.datapath.verify import verify_backup
from virtbackup.engine.stores.chunk_store import SETTLE_SECONDS, ChunkStore
from virtbackup.engine.stores.gc import GcSettings, collect_garbage
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import parse_manifest

CHUNK = 1 * MiB
REPO = LAYOUT_REPOSITORY
Forgery = Callable[[list[bytes]], list[bytes]]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ext4 image with files: data, free space (holes) and zero runs."""
    return build_fs_image(tmp_path_factory.mktemp("img") / "web1.raw", size=48 * MiB).path


def _copy(image: Path, to: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(image), str(to)], check=True)
    return to


def _change(image: Path, seed: int, places: int = 6) -> None:
    """Overwrite 64 KiB at `places` random 64 KiB-aligned offsets."""
    rng = random.Random(seed)
    size = image.stat().st_size
    with open(image, "r+b") as f:
        for _ in range(places):
            f.seek(rng.randrange(size // (64 << 10)) * (64 << 10))
            f.write(rng.randbytes(64 << 10))


def _chunk_files(dest: Path) -> dict[str, int]:
    return {name: status.st_size for name, status in ChunkStore(dest).names()}


def _names(backup: Path, disk: DiskRecord) -> list[str]:
    return parse_index((backup / disk.file).read_bytes(), disk.byte_size, disk.chunk_size)


def test_generations_restore_byte_identical_and_sparse(tmp_path: Path, template: Path) -> None:
    image = _copy(template, tmp_path / "web1.raw")
    dest = tmp_path / "dest"
    kept = []
    for generation in range(3):
        if generation:
            _change(image, generation)
            time.sleep(1.1)  # a new stamp
        backup = make_backup(dest, [disk_of(image)], chunk_size=CHUNK, layout=REPO)
        kept.append((backup.path, _copy(image, tmp_path / f"gen{generation}.raw")))
        disk = backup.manifest.disks[0]
        assert disk.layout == REPO and disk.file == "vda.raw.idx"
        # the index of the backup directory and the manifest's binding of it
        index = (backup.path / disk.file).read_bytes()
        assert hashlib.sha256(index).hexdigest() == disk.index_sha256
    for number, (path, expected) in enumerate(kept):
        out = tmp_path / f"out{number}"
        restored = restore_backup(path, out, NullProgress()).images[0].path
        assert cmp_files(restored, expected)
        # holes and zero chunks stay holes: about the blocks of the image itself (the
        # file system's extent blocks aside), far fewer than its size
        assert restored.stat().st_blocks <= expected.stat().st_blocks * 1.01
        assert restored.stat().st_blocks * 512 < restored.stat().st_size // 2
        assert verify_backup(path, NullProgress()).ok


def test_unchanged_data_adds_nothing_and_compresses_nothing(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    first = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO)
    stored = _chunk_files(dest)
    first_disk = first.manifest.disks[0]
    assert first_disk.stored_size == sum(stored.values()) + len(
        (first.path / first_disk.file).read_bytes()
    )
    compressed = []
    real_encode = chunk_writer.encode_frame

    def counting(data: memoryview, level: int = 0) -> object:
        compressed.append(len(data))
        return real_encode(data, level)

    monkeypatch.setattr(chunk_writer, "encode_frame", counting)
    time.sleep(1.1)
    second = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO)
    disk = second.manifest.disks[0]
    index_bytes = chunk_count(disk.byte_size, disk.chunk_size) * 68
    assert compressed == []
    assert _chunk_files(dest) == stored
    assert list((dest / REPOSITORY_DIR / "writers").iterdir()) == []  # deregistered
    assert disk.stored_size == index_bytes  # the index alone
    assert disk.digest == first_disk.digest


def test_two_domains_from_one_template_share_chunks(tmp_path: Path, template: Path) -> None:
    dest = tmp_path / "dest"
    web = _copy(template, tmp_path / "web.raw")
    db = _copy(template, tmp_path / "db.raw")
    _change(db, 7, places=2)
    first = make_backup(dest, [disk_of(web)], "web", chunk_size=CHUNK, layout=REPO)
    before = _chunk_files(dest)
    second = make_backup(dest, [disk_of(db)], "db", chunk_size=CHUNK, layout=REPO)
    added = set(_chunk_files(dest)) - set(before)
    web_names = set(_names(first.path, first.manifest.disks[0]))
    db_names = set(_names(second.path, second.manifest.disks[0]))
    assert 0 < len(added) <= 2  # the changed chunks only
    assert len(web_names & db_names) >= len(db_names) - 2
    for path, image in ((first.path, web), (second.path, db)):
        assert cmp_files(
            restore_backup(path, tmp_path / path.parent.name, NullProgress()).images[0].path, image
        )


def test_zero_chunk_is_stored_once_and_restored_as_a_hole(tmp_path: Path) -> None:
    image = tmp_path / "sparse.raw"
    with open(image, "wb") as f:
        f.truncate(8 * MiB + 4096)  # a shorter last chunk of its own zero length
        f.seek(2 * MiB)
        f.write(bytes(CHUNK))  # zeros written out: allocated, still the zero chunk
        f.seek(5 * MiB)
        f.write(os.urandom(3000))
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(image)], chunk_size=CHUNK, layout=REPO)
    names = _names(backup.path, backup.manifest.disks[0])
    assert names.count(zero_chunk_name(CHUNK)) == 7
    assert names[-1] == zero_chunk_name(4096)
    assert set(_chunk_files(dest)) == {zero_chunk_name(CHUNK), zero_chunk_name(4096), names[5]}
    restored = restore_backup(backup.path, tmp_path / "out", NullProgress()).images[0].path
    assert cmp_files(restored, image)
    assert restored.stat().st_blocks * 512 <= 64 << 10


def _store_and_index(dest: Path) -> tuple[ChunkStore, RepositoryBackup]:
    store = ChunkStore(dest)
    store.create()
    return store, RepositoryBackup(store, WriterOptions(chunk_size=CHUNK))


def test_unchanged_chunks_are_not_read_unless_missing(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(6 * MiB))
    store, backup = _store_and_index(tmp_path)
    with open(tmp_path / "first.idx", "wb") as index:
        first = backup.write_disk(image, index, NullProgress(), "vda")
    old = parse_index((tmp_path / "first.idx").read_bytes(), 6 * MiB, CHUNK)
    # chunk 2 changes on disk, but is declared unchanged: its old name is kept, unread
    with open(image, "r+b") as f:
        f.seek(2 * MiB + 100)
        f.write(b"changed behind the writer's back")
    _store, again = _store_and_index(tmp_path)
    with open(tmp_path / "second.idx", "wb") as index:
        second = again.write_disk(image, index, NullProgress(), "vda", Unchanged(old, {2, 4}))
    assert parse_index((tmp_path / "second.idx").read_bytes(), 6 * MiB, CHUNK) == old
    assert second.bytes_read == 4 * MiB and second.chunks_new == 0
    assert second.digest == first.digest
    # a chunk declared unchanged but gone from the repository is read after all
    store.path(old[2]).unlink()
    _store, third_backup = _store_and_index(tmp_path)
    with open(tmp_path / "third.idx", "wb") as index:
        third = third_backup.write_disk(image, index, NullProgress(), "vda", Unchanged(old, {2}))
    names = parse_index((tmp_path / "third.idx").read_bytes(), 6 * MiB, CHUNK)
    assert names[:2] == old[:2] and names[3:] == old[3:]
    assert names[2] != old[2] and store.path(names[2]).is_file()
    assert third.bytes_read == 6 * MiB and third.chunks_new == 1


def test_chunk_gone_before_commit_fails_the_backup(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk removed between its first touch and the check before commit (a garbage
    collection that missed the writer): the backup fails, nothing is committed."""
    dest = tmp_path / "dest"
    real_confirm = RepositoryBackup.confirm_all

    waits: list[float] = []

    def remove_one_then_confirm(self: RepositoryBackup) -> None:
        name, _status = next(iter(self.store.names()))
        self.store.path(name).unlink()
        self.sleep = waits.append
        real_confirm(self)

    monkeypatch.setattr(RepositoryBackup, "confirm_all", remove_one_then_confirm)
    with pytest.raises(DiskBackupFailed) as failed:
        make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO)
    message = failed.value.message
    assert "\n" not in message and "vanished" in message and "nothing was committed" in message
    assert waits == [2 * SETTLE_SECONDS]  # looked for once more after gc's settle time
    assert LocalStore(dest).list_backups("web1") == []
    assert list((dest / "web1").iterdir()) == []  # the partial directory is gone
    assert list((dest / REPOSITORY_DIR / "writers").iterdir()) == []  # deregistered


def test_chunk_hidden_by_gc_and_put_back_is_found_before_commit(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc hid a chunk right after the writer touched it and puts it back once it sees the
    touch: the check before commit waits for that and the backup completes, restorable."""
    dest = tmp_path / "dest"
    real_confirm = RepositoryBackup.confirm_all

    def hide_one_then_confirm(self: RepositoryBackup) -> None:
        name, _status = next(iter(self.store.names()))
        os.rename(self.store.path(name), self.store.hidden_path(name))

        def gc_puts_it_back(_seconds: float) -> None:
            os.rename(self.store.hidden_path(name), self.store.path(name))

        self.sleep = gc_puts_it_back
        real_confirm(self)

    monkeypatch.setattr(RepositoryBackup, "confirm_all", hide_one_then_confirm)
    result = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO)
    restore_backup(Path(result.path), tmp_path / "restored", NullProgress())
    assert (tmp_path / "restored" / "vda.raw").read_bytes() == template.read_bytes()


def test_restore_reads_a_chunk_a_killed_gc_left_hidden(tmp_path: Path, template: Path) -> None:
    """A gc killed between hiding a chunk and deciding on it: until the next gc puts it
    back, restore finds the chunk under its hidden name."""
    dest = tmp_path / "dest"
    result = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO)
    store = ChunkStore(dest)
    name = next(n for n, _status in store.names() if n != zero_chunk_name(CHUNK))
    os.rename(store.path(name), store.hidden_path(name))
    restore_backup(Path(result.path), tmp_path / "restored", NullProgress())
    assert (tmp_path / "restored" / "vda.raw").read_bytes() == template.read_bytes()


def _damage(dest: Path, backup: Path, how: str) -> str:
    """Damage one data chunk of the backup; its name."""
    disk = make_disk_record(backup)
    name = next(n for n in _names(backup, disk) if n != zero_chunk_name(CHUNK))
    path = ChunkStore(dest).path(name)
    if how == "missing":
        path.unlink()
    elif how == "renamed":
        other = "f" * 64 if name[0] != "f" else "e" * 64
        path.rename(path.parent / other)
    elif how == "damaged":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "swapped":  # another chunk's valid frame under this name
        second = next(n for n in _names(backup, disk) if n not in (name, zero_chunk_name(CHUNK)))
        shutil.copyfile(ChunkStore(dest).path(second), path)
    return name


def make_disk_record(backup: Path) -> DiskRecord:
    return _manifest(backup).disks[0]


def _manifest(backup: Path) -> Manifest:
    manifest = parse_manifest((backup / "manifest.json").read_bytes(), str(backup))
    assert isinstance(manifest, Manifest)
    return manifest


@pytest.mark.parametrize("how", ["missing", "renamed", "damaged", "swapped"])
def test_bad_chunk_fails_restore_and_verify_naming_it(
    tmp_path: Path, template: Path, how: str
) -> None:
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO).path
    name = _damage(dest, backup, how)
    with pytest.raises(CorruptBackup) as failed:
        restore_backup(backup, tmp_path / "out", NullProgress())
    for message in (failed.value.message, verify_backup(backup, NullProgress()).problem):
        assert message is not None and "\n" not in message
        assert name in message and str(backup) in message
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind


def test_missing_zero_chunk_fails_verify(tmp_path: Path, template: Path) -> None:
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO).path
    ChunkStore(dest).path(zero_chunk_name(CHUNK)).unlink()
    problem = verify_backup(backup, NullProgress()).problem
    assert problem is not None and zero_chunk_name(CHUNK) in problem and str(backup) in problem


def _forge_index(backup: Path, index: bytes) -> None:
    """Replace the index and bind it in the manifest, as an attacker with write access
    to the backup would: only the index's own checks can stop it."""
    manifest = _manifest(backup)
    disk = replace(manifest.disks[0], index_sha256=hashlib.sha256(index).hexdigest())
    (backup / disk.file).write_bytes(index)
    (backup / "manifest.json").write_text(build_manifest(replace(manifest, disks=(disk,))))


def _line(text: str) -> bytes:
    return (text + "\n").encode()


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda lines: lines[:-1], id="a line short"),
        pytest.param(lambda lines: [*lines, lines[0]], id="a line too many"),
        pytest.param(
            lambda lines: [_line("../../etc/passwd".ljust(67, "/")), *lines[1:]], id="traversal"
        ),
        pytest.param(
            lambda lines: [_line("/etc/shadow".ljust(67, "/")), *lines[1:]], id="absolute"
        ),
        pytest.param(lambda lines: [_line("ab/../" + "0" * 61), *lines[1:]], id="dot-dot"),
        pytest.param(lambda lines: [_line("00/" + "1" * 64), *lines[1:]], id="wrong directory"),
        pytest.param(lambda lines: [lines[0].upper(), *lines[1:]], id="upper case"),
        pytest.param(lambda lines: [lines[0][:-1] + b"\0", *lines[1:]], id="no newline"),
    ],
)
def test_forged_index_is_rejected(tmp_path: Path, template: Path, forged: Forgery) -> None:
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO).path
    disk = make_disk_record(backup)
    data = (backup / disk.file).read_bytes()
    lines = [data[start : start + 68] for start in range(0, len(data), 68)]
    _forge_index(backup, b"".join(forged(lines)))
    with pytest.raises(CorruptBackup) as failed:
        restore_backup(backup, tmp_path / "out", NullProgress())
    assert "vda.raw.idx" in failed.value.message and "\n" not in failed.value.message
    assert not verify_backup(backup, NullProgress()).ok
    assert not (tmp_path / "out").exists()


def test_index_not_the_manifests_is_rejected(tmp_path: Path, template: Path) -> None:
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO).path
    index = backup / "vda.raw.idx"
    lines = index.read_bytes()
    index.write_bytes(lines[68:136] + lines[:68] + lines[136:])  # valid, but reordered
    with pytest.raises(CorruptBackup, match="not the index its manifest records"):
        restore_backup(backup, tmp_path / "out", NullProgress())


def test_readme_one_liner_restores_with_stock_tools(tmp_path: Path, template: Path) -> None:
    """Exactly the command the README shows, run by the shell in the backup directory."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    command = next(line.strip() for line in readme.splitlines() if "| xargs cat | lz4 -d" in line)
    spec = Path(chunk_writer.__file__).parents[2] / "core" / "repository_format.py"
    assert command in spec.read_text()  # one command, the same in both places
    dest = tmp_path / "dest"
    backup = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO).path
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.replace("DEST", str(dest))],
        cwd=backup,
        check=True,
    )
    assert cmp_files(backup / "vda.raw", template)


_SLOW_BACKUP = """
import sys
from pathlib import Path
from virtbackup.engine.stores.local import LocalStore
from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.disk_backup import DiskSource, back_up_disks
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
dest, image = Path(sys.argv[1]), Path(sys.argv[2])
disk = DiskSource("vda", image, "raw", image.stat().st_size)
back_up_disks(LocalStore(dest), "web1", "u", "<domain/>", "offline", [disk], NullProgress(),
              WriterOptions(chunk_size=1 << 20, bwlimit=1 << 20), layout="repository")
"""


def test_sigkill_mid_backup_leaves_no_backup_and_the_next_succeeds(
    tmp_path: Path, template: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    child = subprocess.Popen([sys.executable, "-c", _SLOW_BACKUP, str(dest), str(template)])
    try:
        partial = _wait_for_chunks(dest, child)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert partial.exists()
    store = LocalStore(dest)
    assert store.list_backups("web1") == []
    (registration,) = (dest / REPOSITORY_DIR / "writers").iterdir()  # stale, left behind
    started = float(registration.read_text())
    assert all(started <= status.st_mtime for _name, status in ChunkStore(dest).names())
    assert store.remove_partials() == [partial]
    backup = make_backup(dest, [disk_of(template)], chunk_size=CHUNK, layout=REPO)
    assert [b.path for b in store.list_backups("web1")] == [backup.path]
    assert cmp_files(
        restore_backup(backup.path, tmp_path / "out", NullProgress()).images[0].path, template
    )


def _wait_for_chunks(dest: Path, child: subprocess.Popen[bytes]) -> Path:
    """The partial directory of the child, once it has stored some chunks."""
    deadline = time.monotonic() + 120  # the child's start alone takes seconds on a loaded host
    while time.monotonic() < deadline and child.poll() is None:
        partials = list((dest / "web1").glob(".*.partial")) if (dest / "web1").exists() else []
        if partials and len(_chunk_files(dest)) >= 3:
            return partials[0]
        time.sleep(0.05)
    raise AssertionError(f"the child never stored chunks (exit status {child.poll()})")


PLANTS: dict[str, Callable[[Path], None]] = {
    "a FIFO": os.mkfifo,
    "a link": lambda path: path.symlink_to("/etc/hostname"),
    "a directory": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())
def test_a_non_file_under_a_chunks_name_is_no_chunk(
    tmp_path: Path, plant: Callable[[Path], None]
) -> None:
    """Something planted where a chunk would be (the all-zero chunk's name is known to
    everyone): the writer takes it for missing and writes the chunk over it, or fails
    when it cannot; it never commits a backup whose chunk cannot be read."""
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(CHUNK) + bytes(CHUNK))
    dest = tmp_path / "dest"
    dest.mkdir()
    store = ChunkStore(dest)
    store.create(RepositoryConfig(chunk_size=CHUNK))
    planted = store.path(zero_chunk_name(CHUNK))
    planted.parent.mkdir(mode=0o700)
    plant(planted)
    if planted.is_dir() and not planted.is_symlink():
        with pytest.raises(DiskBackupFailed, match=f"cannot write {planted}: Is a directory"):
            make_backup(dest, [disk_of(image)], chunk_size=CHUNK, layout=REPO)
        assert LocalStore(dest).list_backups("web1") == []
        return
    backup = make_backup(dest, [disk_of(image)], chunk_size=CHUNK, layout=REPO)
    assert planted.is_file() and not planted.is_symlink()
    assert verify_backup(backup.path, NullProgress()).ok


def test_a_full_destination_commits_nothing_and_gc_makes_room_for_the_next(
    tmp_path: Path,
) -> None:
    noise = tmp_path / "noise.raw"
    noise.write_bytes(os.urandom(16 * MiB))  # does not compress: cannot fit in 8 MiB
    small = tmp_path / "small.raw"
    small.write_bytes(os.urandom(MiB) + bytes(3 * MiB))
    with small_filesystem(8 * MiB) as dest:
        with pytest.raises(DiskBackupFailed) as failed:
            make_backup(dest, [disk_of(noise)], chunk_size=CHUNK, layout=REPO)
        message = failed.value.message
        assert "\n" not in message and "no space left on the backup destination" in message
        store = ChunkStore(dest)
        assert LocalStore(dest).list_backups() == []
        assert list((dest / "web1").iterdir()) == []  # no partial directory
        assert list(store.temporary_files()) == []  # no half-written chunk
        assert list(store.writers.iterdir()) == []  # deregistered
        # the chunks it named (a batch may have been) are garbage once unused for the
        # grace period (0 here); those not yet named went with the failure
        collect_garbage(dest, GcSettings(grace=0, settle=0))
        assert list(store.names()) == []
        backup = make_backup(dest, [disk_of(small)], chunk_size=CHUNK, layout=REPO)
        assert verify_backup(backup.path, NullProgress()).ok


_GUARDED_SLOW_BACKUP = (
    "from virtbackup.engine.runs.signals import SignalGuard\nSignalGuard().install()\n"
    + _SLOW_BACKUP
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_mid_backup_leaves_nothing_behind(
    tmp_path: Path, template: Path, signum: signal.Signals
) -> None:
    """Stopped as a run stops it (Interrupted raised in the main thread): no backup, no
    partial directory, no half-written chunk, no registration."""
    dest = tmp_path / "dest"
    dest.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _GUARDED_SLOW_BACKUP, str(dest), str(template)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        partial = _wait_for_chunks(dest, child)
        child.send_signal(signum)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert f"Interrupted: interrupted by {signum.name}" in err
    assert LocalStore(dest).list_backups("web1") == []
    assert not partial.exists() and list((dest / "web1").iterdir()) == []
    store = ChunkStore(dest)
    assert list(store.temporary_files()) == []
    assert list(store.writers.iterdir()) == []


@pytest.mark.parametrize("holding", [False, True], ids=["empty", "holding the chunk"])
def test_a_chunk_directory_that_is_a_link_fails_the_backup(tmp_path: Path, holding: bool) -> None:
    """chunks/ab planted as a link to a directory elsewhere: gc, verify --all-chunks and
    the listing of chunks never look through one, so nothing is written or used
    through it; the backup fails in one line and nothing is committed."""
    image = tmp_path / "disk.raw"
    data = os.urandom(CHUNK)
    image.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    store = ChunkStore(dest)
    store.create(RepositoryConfig(chunk_size=CHUNK))
    name = hashlib.sha256(data).hexdigest()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if holding:  # the chunk itself, written there earlier
        make_backup(tmp_path / "other", [disk_of(image)], chunk_size=CHUNK, layout=REPO)
        shutil.copy(ChunkStore(tmp_path / "other").path(name), elsewhere / name)
    before = sorted(os.listdir(elsewhere))
    store.path(name).parent.symlink_to(elsewhere)
    with pytest.raises(DiskBackupFailed) as failed:
        make_backup(dest, [disk_of(image)], chunk_size=CHUNK, layout=REPO)
    assert failed.value.message.endswith(f"{store.path(name).parent} is a symbolic link")
    assert LocalStore(dest).list_backups("web1") == []
    assert sorted(os.listdir(elsewhere)) == before


def test_a_repository_without_its_description_is_refused_unless_empty(tmp_path: Path) -> None:
    """repository.json deleted while chunks exist: made anew it could say another chunk
    size than the backups were cut into, so the backup stops in one line saying how to
    recover, and nothing is written; a repository directory with no files in it (made,
    then the first backup killed) is simply made."""
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(CHUNK) + bytes(CHUNK))
    dest = tmp_path / "dest"
    make_backup(dest, [disk_of(image)], chunk_size=CHUNK, layout=REPO)
    description = dest / REPOSITORY_DIR / "repository.json"
    description.unlink()
    chunks = _chunk_files(dest)
    with pytest.raises(StoreError) as refused:
        make_backup(dest, [disk_of(image)], chunk_size=4 * CHUNK, layout=REPO)
    assert refused.value.message == (
        f"{dest / REPOSITORY_DIR} holds chunks/ but no repository.json: the repository is damaged"
    )
    assert "put repository.json back" in str(refused.value.hint)
    assert not description.exists() and _chunk_files(dest) == chunks
    assert len(LocalStore(dest).list_backups("web1")) == 1

    for chunk in chunks:  # nothing left but empty directories
        ChunkStore(dest).path(chunk).unlink()
    time.sleep(1.1)  # a new stamp
    make_backup(dest, [disk_of(image)], chunk_size=4 * CHUNK, layout=REPO)
    assert ChunkStore(dest).config.chunk_size == 4 * CHUNK
