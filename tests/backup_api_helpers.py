"""Helpers of the backup-API tests: a backup that must succeed, the reference copy of a
disk at an instant, a restored disk, generations of backups of one domain, and what a
backup job may leave behind, a backup interrupted while its job serves."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.cli import virtbackup, virtbackup_in, without_host_config

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.backup_job import SOCKET_DIR


def backup(
    state_dir: Path, dest: Path, name: str, *args: str, global_args: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`backup NAME` into the repository in DEST, which must succeed: its summary row."""
    result = virtbackup_in(
        state_dir,
        *global_args,
        *("backup", name, "--dest", str(dest), "--layout", "repository", "--json", *args),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return dict(row)


def reference(raw: Any, image: Path, copy: Path) -> Path:
    """The guest's view of the disk now: paused (when it runs), copied as raw, resumed."""
    running = raw.isActive()
    if running:
        raw.suspend()
    try:
        subprocess.run(
            ["qemu-img", "convert", "-U", "-O", "raw", str(image), str(copy)], check=True
        )
    finally:
        if running:
            raw.resume()
    return copy


def restored_disk(state_dir: Path, backup: Path, to: Path, *options: str) -> Path:
    result = virtbackup_in(state_dir, "restore", str(backup), "--to", str(to), *options)
    assert result.returncode == 0, result.stdout + result.stderr
    return to / "vda.raw"


def full_reads(row: dict[str, Any]) -> list[str]:
    return [w for w in row.get("warnings", []) if "read in full" in w]


class Generations:
    """Backups of one domain into one DEST, each with the reference of its instant."""

    def __init__(self, raw: Any, image: Path, state_dir: Path, dest: Path, tmp: Path) -> None:
        self.raw = raw
        self.image = image
        self.state_dir = state_dir
        self.dest = dest
        self.tmp = tmp
        self.made: list[tuple[Path, Path]] = []  # (backup, reference)
        self.backup_options: tuple[str, ...] = ()  # e.g. --encrypt RECIPIENTS
        self.restore_options: tuple[str, ...] = ()  # e.g. --identity IDENTITY

    def back_up(self, method: str = "backup-api") -> tuple[dict[str, Any], int]:
        """One backup now, expected to be made by `method`: its summary row and the
        bytes it read from the disk."""
        expected = reference(self.raw, self.image, self.tmp / f"ref{len(self.made)}.raw")
        time.sleep(1.1)  # a new stamp
        result = virtbackup(
            "-v",
            "backup",
            self.raw.name(),
            "--dest",
            str(self.dest),
            "--layout",
            "repository",
            "--json",
            *self.backup_options,
            state_dir=self.state_dir,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (row,) = json.loads(result.stdout)["domains"]
        assert row["result"] == "ok" and row["method"] == method, row
        found = re.search(rf"{re.escape(self.raw.name())} vda: (\d+) bytes read", result.stderr)
        assert found, result.stderr
        self.made.append((Path(row["backup"]), expected))
        return row, int(found.group(1))

    def check_all_restore(self) -> None:
        for number in range(len(self.made)):
            self.check_restores(number)

    def check_restores(self, number: int) -> None:
        backup, expected = self.made[number]
        to = self.tmp / f"restored{number}-of-{len(self.made)}"
        disk = restored_disk(self.state_dir, backup, to, *self.restore_options)
        subprocess.run(["cmp", str(expected), str(disk)], check=True)

    def checkpoint_of(self, number: int) -> str:
        manifest = json.loads((self.made[number][0] / "manifest.json").read_text())
        return str(manifest["checkpoint"])


def job_leftovers(hypervisor: Hypervisor, name: str, workdir: Path) -> list[str]:
    """Anything of a backup job still there: the job, a scratch file, a socket."""
    dom = hypervisor.domain(name)
    found = [p.name for p in workdir.iterdir() if p.name.endswith(".scratch")]
    found += [p.name for p in Path(SOCKET_DIR).glob(f"{dom.uuid}.*")]
    if dom.backups.job_xml() is not None:
        found.append("job")
    return found


def interrupted_mid_job(dom: Any, state_dir: Path, dest: Path, signum: int, *options: str) -> int:
    """Start a slow backup of the domain (with `options`), send `signum` while its job
    serves; the exit status."""
    env = {**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)}
    args = ["backup", dom.name, "--dest", str(dest), "--layout", "repository", *options]
    running = subprocess.Popen(
        [sys.executable, "-m", "virtbackup", *without_host_config(args), "--bwlimit", "1M"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while dom.backups.job_xml() is None:
            assert running.poll() is None, "the backup ended before its job was seen"
            assert time.monotonic() < deadline, "no backup job started"
            time.sleep(0.1)
        time.sleep(1)  # reading
        running.send_signal(signum)
    finally:
        running.wait()
    return running.returncode
