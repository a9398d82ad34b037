"""Accounting, export and verify --all-chunks on real repository backups of a real
domain: backed up twice with a change in between."""

import json
import os
import subprocess
import time
from pathlib import Path

from harness.cli import virtbackup_in
from harness.images import MiB
from harness.libvirtd import DiskSpec, DomainFactory
from repository_fixture import random_image

from virtbackup.core.repository_format import REPOSITORY_DIR

CHUNK = 4 * MiB  # the repository's default grid


def _backup(state_dir: Path, dest: Path, name: str) -> Path:
    result = virtbackup_in(
        state_dir, "backup", name, "--layout", "repository", "--dest", str(dest), "--json"
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return Path(row["backup"])


def _chunks(backup: Path) -> list[str]:
    return [line.split("/")[1] for line in (backup / "vda.raw.idx").read_text().split()]


def test_two_generations_accounted_exported_and_verified(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    image = random_image(
        domain_factory.workdir / "a.raw", 24 * MiB, seed=11, zero_chunks=(4, 5, 6, 7)
    )
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="acct")
    first = _backup(state_dir, dest, dom.name())
    with open(image, "r+b") as disk:  # 64 KiB changed inside the fourth chunk
        disk.seek(3 * CHUNK + 100 * 1024)
        disk.write(os.urandom(64 * 1024))
    time.sleep(1.1)  # a new stamp
    second = _backup(state_dir, dest, dom.name())
    old, new = _chunks(first), _chunks(second)
    assert [a == b for a, b in zip(old, new, strict=True)] == [True] * 3 + [False] + [True] * 2
    chunks = dest / REPOSITORY_DIR / "chunks"

    def size(name: str) -> int:
        return (chunks / name[:2] / name).stat().st_size

    def files(backup: Path) -> int:
        return sum(p.stat().st_size for p in backup.iterdir() if p.name != "verified.json")

    listed = virtbackup_in(state_dir, "backups", "--dest", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {Path(b["path"]): b for b in json.loads(listed.stdout)["backups"]}
    assert rows[first]["logical_size"] == rows[second]["logical_size"] == 24 * MiB
    assert rows[first]["frees"] == files(first) + size(old[3])
    assert rows[second]["frees"] == files(second) + size(new[3])

    summary = virtbackup_in(state_dir, "backups", "--dest", str(dest), "--summary", "--json")
    repository = json.loads(summary.stdout)["repository"]
    distinct = set(old) | set(new)
    assert repository["chunks"] == len(distinct) == 7  # 6 in the first (one zero), 1 new
    assert repository["stored_bytes"] == sum(size(name) for name in distinct)
    assert repository["logical_bytes"] == 48 * MiB
    assert repository["dedup_ratio"] > 1.9  # random data: stored ≈ logical of one

    exported_to = tmp_path / "usb"
    result = virtbackup_in(state_dir, "export", str(second), "--to", str(exported_to))
    assert result.returncode == 0, result.stderr
    exported = exported_to / dom.name() / second.name
    subprocess.run(
        ["lz4", "-d", "-q", str(exported / "vda.raw.lz4"), str(tmp_path / "decoded")], check=True
    )
    subprocess.run(["cmp", str(image), str(tmp_path / "decoded")], check=True)
    restored = virtbackup_in(state_dir, "restore", str(exported), "--to", str(tmp_path / "r"))
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(image), str(tmp_path / "r" / "vda.raw")], check=True)

    clean = virtbackup_in(state_dir, "verify", "--all-chunks", "--dest", str(dest))
    assert clean.returncode == 0, clean.stderr
    shared = chunks / old[0][:2] / old[0]
    shared.write_bytes(shared.read_bytes()[:-5])
    damaged = virtbackup_in(state_dir, "verify", "--all-chunks", "--dest", str(dest))
    assert damaged.returncode == 1
    (line,) = damaged.stderr.strip().splitlines()
    labels = f"{dom.name()}/{first.name}, {dom.name()}/{second.name}"
    assert line.startswith(f"virtbackup: error: chunk {old[0][:2]}/{old[0]} is damaged")
    assert line.endswith(f"used by {labels}")
