"""`virtbackup export BACKUP --to DIR`: a repository or stream backup as a single-stream
backup that `restore`, `verify` and stock `lz4 -d` accept, byte for byte."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from age_helpers import make_key_pair
from backup_helpers import DOMAIN_XML, MiB, cmp_files, disk_of, make_backup, small_filesystem
from harness.cli import NO_HOST_CONFIG
from harness.cli import virtbackup as run_cli
from repository_fixture import RepositoryBackup, random_image, write_repository_backup

from virtbackup.adapters import age
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore

NOW = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def repository_backup(tmp_path: Path) -> tuple[RepositoryBackup, Path, Path]:
    """A repository backup of two disks: vda with a zero chunk and a short last chunk."""
    vda = random_image(tmp_path / "vda.raw", 5 * MiB + 4096, seed=1, zero_chunks=(1, 3))
    vdb = random_image(tmp_path / "vdb.raw", 2 * MiB, seed=2)
    backup = write_repository_backup(tmp_path / "dest", {"vda": vda, "vdb": vdb}, NOW)
    return backup, vda, vdb


def test_a_repository_backup_exports_to_streams_that_restore_and_verify(
    repository_backup: tuple[RepositoryBackup, Path, Path], tmp_path: Path
) -> None:
    backup, vda, vdb = repository_backup
    out = tmp_path / "usb"
    result = run_cli("export", str(backup.path), "--to", str(out))
    assert result.returncode == 0, result.stderr
    exported = out / "web1" / backup.stamp
    assert result.stdout == f"exported\t{exported}\n"
    assert sorted(os.listdir(exported)) == [
        "domain.xml",
        "manifest.json",
        "vda.raw.lz4",
        "vdb.raw.lz4",
    ]
    for entry in exported.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    manifest = json.loads((exported / "manifest.json").read_text())
    for disk, original in zip(manifest["disks"], backup.manifest.disks, strict=True):
        assert "layout" not in disk and "index_sha256" not in disk
        assert disk["file"] == f"{disk['target']}.raw.lz4"
        assert disk["digest"] == original.digest
        assert disk["stored_size"] == (exported / disk["file"]).stat().st_size
    for target, image in (("vda", vda), ("vdb", vdb)):
        decoded = tmp_path / f"{target}.lz4d"
        subprocess.run(
            ["lz4", "-d", "-q", str(exported / f"{target}.raw.lz4"), str(decoded)], check=True
        )
        assert cmp_files(decoded, image)
    verified = run_cli("verify", str(exported))
    assert verified.returncode == 0, verified.stderr
    restored = run_cli("restore", str(exported), "--to", str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stderr
    paths = dict(line.split("\t") for line in restored.stdout.splitlines())
    assert cmp_files(Path(paths["vda"]), vda) and cmp_files(Path(paths["vdb"]), vdb)
    # the zero chunks are holes in the restored image as in the source
    assert os.stat(paths["vda"]).st_blocks * 512 < 4 * MiB + 8192


def test_a_stream_backup_exports_as_the_same_stream(tmp_path: Path) -> None:
    image = random_image(tmp_path / "vda.raw", 3 * MiB, seed=4, zero_chunks=(1,))
    source = make_backup(tmp_path / "dest", [disk_of(image)]).path
    result = run_cli("export", str(source), "--to", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    exported = tmp_path / "out" / "web1" / source.name
    assert cmp_files(exported / "vda.raw.lz4", source / "vda.raw.lz4")
    assert run_cli("verify", str(exported)).returncode == 0


def test_an_encrypted_backup_exports_decrypted_without_secrets(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path / "keys")
    image = random_image(tmp_path / "vda.raw", 2 * MiB, seed=5)
    xml = DOMAIN_XML.replace("</devices>", "<graphics type='vnc' passwd='hunter2'/></devices>")
    recipients = age.read_recipients(keys.recipients)
    source = make_backup(tmp_path / "dest", [disk_of(image)], xml=xml, encrypt_to=recipients).path
    without = run_cli("export", str(source), "--to", str(tmp_path / "out"))
    assert without.returncode == 2 and "is encrypted: give --identity FILE" in without.stderr
    args = ("export", str(source), "--to", str(tmp_path / "out"), "--identity", str(keys.identity))
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    exported = tmp_path / "out" / "web1" / source.name
    assert "hunter2" not in (exported / "domain.xml").read_text()
    restored = run_cli("restore", str(exported), "--to", str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stderr
    assert cmp_files(Path(restored.stdout.split("\t")[1].strip()), image)


def test_a_damaged_chunk_fails_the_export_and_leaves_nothing(
    repository_backup: tuple[RepositoryBackup, Path, Path], tmp_path: Path
) -> None:
    backup, _vda, _vdb = repository_backup
    chunk = ChunkStore(backup.path.parent.parent).path(backup.chunks["vdb"][1])
    with open(chunk, "r+b") as frame:
        frame.seek(100)
        frame.write(b"\0" * 16)
    out = tmp_path / "out"
    result = run_cli("export", str(backup.path), "--to", str(out))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("virtbackup: error: vdb: the frame for disk")
    assert os.listdir(out / "web1") == []  # no backup, no partial directory


def test_a_missing_chunk_is_named(
    repository_backup: tuple[RepositoryBackup, Path, Path], tmp_path: Path
) -> None:
    backup, _vda, _vdb = repository_backup
    name = backup.chunks["vda"][2]
    os.unlink(ChunkStore(backup.path.parent.parent).path(name))
    result = run_cli("export", str(backup.path), "--to", str(tmp_path / "out"))
    assert result.returncode == 1
    assert f"vda: chunk {name} of backup {backup.path} is missing from" in result.stderr
    assert os.listdir(tmp_path / "out" / "web1") == []


def test_an_export_never_replaces_one_that_exists(
    repository_backup: tuple[RepositoryBackup, Path, Path], tmp_path: Path
) -> None:
    backup, _vda, _vdb = repository_backup
    out = tmp_path / "out"
    assert run_cli("export", str(backup.path), "--to", str(out)).returncode == 0
    manifest = (out / "web1" / backup.stamp / "manifest.json").read_bytes()
    again = run_cli("export", str(backup.path), "--to", str(out))
    assert again.returncode == 1
    assert f"{out / 'web1' / backup.stamp} exists already" in again.stderr
    assert (out / "web1" / backup.stamp / "manifest.json").read_bytes() == manifest
    bad = run_cli("export", str(tmp_path / "nothing"), "--to", str(out))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_an_interrupted_export_leaves_no_complete_looking_backup(
    tmp_path: Path, signum: signal.Signals
) -> None:
    big = random_image(tmp_path / "big.raw", 256 * MiB, seed=6)
    backup = write_repository_backup(tmp_path / "dest", {"vda": big}, NOW)
    big.unlink()
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, "export", str(backup.path)]
        + ["--to", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = out / "web1" / f".{backup.stamp}.partial" / "vda.raw.lz4"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 8 * MiB):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signum)
    _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode in (-signal.SIGKILL, 130), stderr
    assert LocalStore(out).list_backups() == []
    assert not (out / "web1" / backup.stamp).exists()
    if signum == signal.SIGTERM:  # unwound: the partial directory is gone too
        assert os.listdir(out / "web1") == []
    result = run_cli("export", str(backup.path), "--to", str(out))  # clears a dead partial
    assert result.returncode == 0, result.stderr
    assert os.listdir(out / "web1") == [backup.stamp]


def test_an_export_to_a_full_filesystem_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    image = random_image(tmp_path / "vda.raw", 12 * MiB, seed=3)  # random: 12 MiB stored
    backup = write_repository_backup(tmp_path / "dest", {"vda": image}, NOW)
    with small_filesystem(8 * MiB) as out:
        result = run_cli("export", str(backup.path), "--to", str(out))
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert line == (
            f"virtbackup: error: no space left in {out} for the export of {backup.path}: "
            "free space there or export --to another directory"
        )
        assert os.listdir(out / "web1") == []
