"""`repository_chunk_size`: a new repository cut into 64 KiB chunks, end to end through
the commands (backup, unchanged backup, restore, verify, gc, the README's stock-tool
restore), and an existing repository that keeps its size with a warning."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from harness.cli import virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.core.repository_format import CONFIG_FILE, LINE_SIZE, REPOSITORY_DIR
from virtbackup.engine.stores.chunk_store import ChunkStore

SMALL = 64 << 10


def _backup(state_dir: Path, config: Path, domain: str) -> dict[str, object]:
    result = virtbackup_in(state_dir, "--config", str(config), "backup", domain, "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return dict(row)


def _chunks(dest: Path) -> set[str]:
    return {name for name, _status in ChunkStore(dest).names()}


def _readme_command() -> str:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    return next(line.strip() for line in readme.splitlines() if "| xargs cat | lz4 -d" in line)


def test_a_new_repository_with_small_chunks_and_an_existing_one_keeping_its_size(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    image = build_fs_image(domain_factory.workdir / "data.raw", size=32 * MiB, content=3 * MiB)
    domain = domain_factory.create([DiskSpec("raw", image=image.path)], hint="chunk64").name()
    config = tmp_path / "virtbackup.toml"
    config.write_text(f'dest = "{dest}"\nrepository_chunk_size = "64K"\ngc_grace = 0\n')

    first = Path(str(_backup(state_dir, config, domain)["backup"]))
    description = json.loads((dest / REPOSITORY_DIR / CONFIG_FILE).read_text())
    assert description["chunk_size"] == SMALL
    (disk,) = json.loads((first / "manifest.json").read_text())["disks"]
    assert disk["chunk_size"] == SMALL
    assert (first / "vda.raw.idx").stat().st_size == 32 * MiB // SMALL * LINE_SIZE
    stored = _chunks(dest)

    time.sleep(1.1)  # a new stamp
    second = Path(str(_backup(state_dir, config, domain)["backup"]))
    assert _chunks(dest) == stored  # unchanged: nothing added

    restored = tmp_path / "restored"
    result = virtbackup_in(state_dir, "restore", str(second), "--to", str(restored))
    assert result.returncode == 0, result.stderr
    subprocess.run(["cmp", str(image.path), str(restored / "vda.raw")], check=True)
    assert os.stat(restored / "vda.raw").st_blocks <= os.stat(image.path).st_blocks * 1.01
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", _readme_command().replace("DEST", str(dest))],
        cwd=second,
        check=True,
    )
    subprocess.run(["cmp", str(image.path), str(second / "vda.raw")], check=True)
    (second / "vda.raw").unlink()

    # an existing repository keeps its size: another one asked for is a warning
    lines = (first / "vda.raw.idx").read_text().split()
    unique = next(n for n, line in enumerate(lines) if lines.count(line) == 1)
    with open(image.path, "r+b") as disk_image:
        disk_image.seek(unique * SMALL)
        disk_image.write(os.urandom(SMALL))
    config.write_text(f'dest = "{dest}"\nrepository_chunk_size = "1M"\ngc_grace = 0\n')
    time.sleep(1.1)
    third = _backup(state_dir, config, domain)
    assert third["warnings"] == [
        f"repository_chunk_size 1.0 MiB applies to new repositories only: "
        f"{dest / REPOSITORY_DIR} keeps its chunks of 64.0 KiB"
    ]
    assert json.loads((dest / REPOSITORY_DIR / CONFIG_FILE).read_text())["chunk_size"] == SMALL
    assert len(_chunks(dest) - stored) == 1  # the one 64 KiB chunk written to

    for backup in (first, Path(str(third["backup"]))):
        result = virtbackup_in(state_dir, "verify", str(backup))
        assert result.returncode == 0, result.stderr
    result = virtbackup_in(state_dir, "verify", "--all-chunks", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    on_disk = len(_chunks(dest))
    assert f"{on_disk} of {on_disk} chunks read, indexes of 3 backups" in result.stdout

    # the first two backups go: gc removes the chunk only they used, nothing else
    for old in (first, second):
        shutil.rmtree(old)
    result = virtbackup_in(state_dir, "--config", str(config), "gc")
    assert result.returncode == 0, result.stderr
    assert len(_chunks(dest)) == on_disk - 1
    result = virtbackup_in(state_dir, "verify", str(third["backup"]))
    assert result.returncode == 0, result.stderr

    # its description deleted: the next backup is refused in one line, exit 1
    (dest / REPOSITORY_DIR / CONFIG_FILE).unlink()
    result = virtbackup_in(state_dir, "--config", str(config), "backup", domain)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"no {CONFIG_FILE}: the repository is damaged: put {CONFIG_FILE} back" in (
        " ".join((result.stdout + result.stderr).split())
    )
    assert not (dest / REPOSITORY_DIR / CONFIG_FILE).exists()
