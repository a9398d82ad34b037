"""`virtbackup restore`: sparse, byte-identical, refuses to overwrite without --force."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from backup_helpers import MiB, cmp_files, disk_of, make_backup
from harness.cli import virtbackup as run_cli
from harness.images import allocated_bytes, build_fs_image


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("restore")
    raw = build_fs_image(work / "web1.raw", size=64 * MiB, content=8 * MiB).path
    qcow2 = build_fs_image(work / "data.qcow2", size=32 * MiB, fmt="qcow2").path
    return raw, qcow2


@pytest.fixture
def backup(tmp_path: Path, images: tuple[Path, Path]) -> Path:
    raw, qcow2 = images
    disks = [disk_of(raw), disk_of(qcow2, "vdb", "qcow2")]
    return make_backup(tmp_path / "dest", disks).path


def test_restore_is_sparse_and_identical(
    backup: Path, images: tuple[Path, Path], tmp_path: Path
) -> None:
    target = tmp_path / "restored"
    result = run_cli("restore", str(backup), "--to", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"vda\t{target}/vda.raw", f"vdb\t{target}/vdb.qcow2"]
    for source, restored in zip(images, ["vda.raw", "vdb.qcow2"], strict=True):
        assert cmp_files(source, target / restored)
        assert allocated_bytes(target / restored) <= allocated_bytes(source)
        assert stat.S_IMODE((target / restored).stat().st_mode) == 0o600
    assert sorted(os.listdir(target)) == ["vda.raw", "vdb.qcow2"]  # no temporary left


def test_refuses_to_overwrite_without_force(backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    target.mkdir()
    (target / "vda.raw").write_bytes(b"precious")
    result = run_cli("restore", str(backup), "--to", str(target))
    assert result.returncode == 1
    assert "vda.raw already exist(s): add --force to overwrite" in result.stderr
    assert (target / "vda.raw").read_bytes() == b"precious"
    forced = run_cli("restore", str(backup), "--to", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (target / "vda.raw").stat().st_size == 64 * MiB


def test_stock_lz4_reads_the_stream(backup: Path, tmp_path: Path) -> None:
    out = tmp_path / "by-lz4.raw"
    subprocess.run(["lz4", "-d", "-q", str(backup / "vda.raw.lz4"), str(out)], check=True)
    assert out.stat().st_size == 64 * MiB


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("no-manifest", "is not a backup (it has no manifest.json)"),
        ("bad-json", "manifest.json is corrupt: it is not valid JSON"),
        ("missing-stream", "vda: stream file"),
        ("edited-digest", "vda: the index and the manifest disagree on the digest"),
    ],
)
def test_bad_backups_one_line_exit_1(
    backup: Path, tmp_path: Path, setup: str, message: str
) -> None:
    target = backup
    if setup == "missing":
        target = tmp_path / "nothing-here"
    elif setup == "no-manifest":
        (backup / "manifest.json").unlink()
    elif setup == "bad-json":
        (backup / "manifest.json").write_text("{")
    elif setup == "edited-digest":
        manifest = backup / "manifest.json"
        document = json.loads(manifest.read_text())
        document["disks"][0]["digest"] = "00" * 32
        manifest.write_text(json.dumps(document))
    else:
        (backup / "vda.raw.lz4").unlink()
    result = run_cli("restore", str(target), "--to", str(tmp_path / "out"))
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_full_restore_destination_is_one_clear_line(backup: Path) -> None:
    from backup_helpers import small_filesystem

    with small_filesystem(4 * MiB) as target:
        result = run_cli("restore", str(backup), "--to", str(target))
        assert result.returncode == 1
        assert "no space left while restoring" in result.stderr
        assert [p for p in os.listdir(target) if p != "lost+found"] == []
