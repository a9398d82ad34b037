"""Helpers of the backup-API tests: the reference copy of a disk at an instant, a
restored disk, and what a backup job may leave behind."""

import subprocess
from pathlib import Path
from typing import Any

from harness.cli import virtbackup_in

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.backup_job import SOCKET_DIR


def reference(raw: Any, image: Path, copy: Path) -> Path:
    """The guest's view of the disk now: paused, copied as raw, resumed."""
    raw.suspend()
    try:
        subprocess.run(
            ["qemu-img", "convert", "-U", "-O", "raw", str(image), str(copy)], check=True
        )
    finally:
        raw.resume()
    return copy


def restored_disk(state_dir: Path, backup: Path, to: Path, *options: str) -> Path:
    result = virtbackup_in(state_dir, "restore", str(backup), "--to", str(to), *options)
    assert result.returncode == 0, result.stdout + result.stderr
    return to / "vda.raw"


def job_leftovers(hypervisor: Hypervisor, name: str, workdir: Path) -> list[str]:
    """Anything of a backup job still there: the job, a scratch file, a socket."""
    dom = hypervisor.domain(name)
    found = [p.name for p in workdir.iterdir() if p.name.endswith(".scratch")]
    found += [p.name for p in Path(SOCKET_DIR).glob(f"{dom.uuid}.*")]
    if dom.backups.job_xml() is not None:
        found.append("job")
    return found
