"""The backup-API method on the tiny real guest (qemu-ga): the guest's filesystems frozen
for the job's start only, its instant served over NBD while the guest writes on, and
files written inside the guest (dd, sync) between backups read back from each generation.

A quiesced instant is told from a crash-consistent one by the image itself: a mounted
ext4 carries the "needs_recovery" mark on disk, except while it is frozen.
"""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from backup_api_helpers import job_leftovers, restored_disk
from consistency_helpers import planned
from harness.cli import virtbackup_in
from harness.guest import GUEST_MOUNT, TinyGuestFactory, fs_is_clean, read_file_from_disk

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import list_journals
from virtbackup.core.model import Method
from virtbackup.core.progress import RecordingSteps
from virtbackup.engine.datapath.nbd_source import NbdSource
from virtbackup.engine.methods.backup_api import backup_api_images
from virtbackup.engine.methods.image_source import Consistency, SourceContext

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]
MiB = 1024 * 1024


def served_copy(location: Any, target: Path) -> Path:
    """The disk as the job serves it, into a sparse raw file."""
    source = NbdSource(location)
    try:
        with open(target, "wb") as out:
            out.truncate(source.size)
            for offset in range(0, source.size, 4 * MiB):
                length = min(4 * MiB, source.size - offset)
                if source.has_data(offset, offset + length):
                    data = bytearray(length)
                    source.read_into(memoryview(data), offset)
                    out.seek(offset)
                    out.write(data)
    finally:
        source.close()
    return target


def test_the_job_starts_frozen_and_serves_its_instant_while_the_guest_writes(
    tiny_guest: TinyGuestFactory, hypervisor: Hypervisor, tmp_path: Path
) -> None:
    guest = tiny_guest("qcow2")
    name = guest.dom.name()
    state_dir = tmp_path / "state"
    # Written just before the backup and not synced: only the freeze puts it on disk.
    code, out = guest.exec(f"echo in-the-backup > {GUEST_MOUNT}/note")
    assert code == 0, out
    steps = RecordingSteps()
    with backup_api_images(
        hypervisor,
        planned(hypervisor, name, Method.BACKUP_API, ["vda"]),
        SourceContext(state_dir=state_dir, steps=steps),
    ) as window:
        assert window.consistency == Consistency.QUIESCED
        assert guest.agent("guest-fsfreeze-status") == "thawed"  # thawed at once
        code, out = guest.exec(f"echo after-the-start > {GUEST_MOUNT}/during && sync")
        assert code == 0, out
        (image,) = window.images
        assert image.nbd is not None and image.format == "raw"
        served = served_copy(image.nbd, tmp_path / "served.raw")

    assert not steps.warnings and list_journals(state_dir) == []
    assert job_leftovers(hypervisor, name, guest.disk.parent) == []
    clean, report = fs_is_clean(served)
    assert clean, report  # frozen at the instant: journal flushed
    assert read_file_from_disk(served, "/note") == b"in-the-backup\n"
    with pytest.raises(FileNotFoundError):
        read_file_from_disk(served, "/during")  # written after the instant
    assert guest.exec("echo still-here")[1] == "still-here\n"


def test_files_written_inside_the_guest_between_incremental_backups(
    tiny_guest: TinyGuestFactory, hypervisor: Hypervisor, tmp_path: Path
) -> None:
    guest = tiny_guest("qcow2", size=32 * MiB)
    name = guest.dom.name()
    state_dir, dest = tmp_path / "state", tmp_path / "dest"
    dest.mkdir()
    backups = []
    for generation in range(4):
        command = (
            f"dd if=/dev/urandom of={GUEST_MOUNT}/gen{generation} bs=64k count=8 "
            f"&& echo {generation} > {GUEST_MOUNT}/latest && sync"
        )
        code, out = guest.exec(command)
        assert code == 0, out
        result = virtbackup_in(
            state_dir, "backup", name, "--dest", str(dest), "--layout", "repository", "--json"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (row,) = json.loads(result.stdout)["domains"]
        assert row["result"] == "ok" and row["method"] == "backup-api", row
        assert row["message"] == "quiesced", row
        # the first reads everything as any first backup does: nothing to warn about
        assert not [w for w in row.get("warnings", []) if "read in full" in w], row
        code, written = guest.exec(f"md5sum {GUEST_MOUNT}/gen{generation}")
        assert code == 0, written
        backups.append((Path(row["backup"]), written.split()[0]))
        subprocess.run(["sleep", "1.1"], check=True)  # a new stamp

    for generation, (backup, digest) in enumerate(backups):
        disk = restored_disk(state_dir, backup, tmp_path / f"r{generation}")
        clean, report = fs_is_clean(disk)
        assert clean, report
        assert read_file_from_disk(disk, "/latest") == f"{generation}\n".encode()
        data = read_file_from_disk(disk, f"/gen{generation}")
        md5 = subprocess.run(["md5sum"], input=data, capture_output=True, check=True)
        assert md5.stdout.split()[0].decode() == digest
        with pytest.raises(FileNotFoundError):
            read_file_from_disk(disk, f"/gen{generation + 1}")
    assert guest.exec("echo still-here")[1] == "still-here\n"
