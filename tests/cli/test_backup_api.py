"""`backup --method backup-api` end to end on real running domains: read over NBD from
libvirt's pull backup job, restored byte-identical to the disk at the backup's instant;
the job, its scratch files and its socket gone afterwards, also after a kill -9 and
`clean`; the domain running throughout."""

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from backup_api_helpers import (
    backup,
    interrupted_mid_job,
    job_leftovers,
    reference,
    restored_disk,
)
from consistency_helpers import guest_write
from harness.cli import virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import list_journals

MiB = 1024 * 1024


def test_backup_api_reads_the_instant_over_nbd_and_leaves_nothing(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    # a cdrom beside the disk: left out of the job and of the checkpoint
    disks = [DiskSpec("qcow2", 24 * MiB), DiskSpec("empty-cdrom")]
    raw = domain_factory.create(disks, hint="api", start=True)
    image = domain_factory.workdir / "api-disk0.qcow2"
    guest_write(raw, "virtio-disk0", 7, 1 * MiB, 2 * MiB)
    guest_write(raw, "virtio-disk0", 3, 13 * MiB, 5 * MiB)
    expected = reference(raw, image, tmp_path / "ref.raw")

    row = backup(state_dir, dest, raw.name(), "--method", "backup-api")
    assert row["method"] == "backup-api", row
    assert raw.isActive() and raw.state()[0] == 1  # running
    assert job_leftovers(hypervisor, raw.name(), domain_factory.workdir) == []
    disk = restored_disk(state_dir, Path(row["backup"]), tmp_path / "r1")
    subprocess.run(["cmp", str(expected), str(disk)], check=True)
    manifest = json.loads((Path(row["backup"]) / "manifest.json").read_text())
    (record,) = manifest["disks"]
    assert record["format"] == "raw" and record["source"] == str(image)

    # auto chooses it for a running qcow2 domain with the repository layout
    guest_write(raw, "virtio-disk0", 9, 2 * MiB, 1 * MiB)
    expected = reference(raw, image, tmp_path / "ref2.raw")
    time.sleep(1.1)  # a new stamp
    row = backup(state_dir, dest, raw.name())
    assert row["method"] == "backup-api", row
    disk = restored_disk(state_dir, Path(row["backup"]), tmp_path / "r2")
    subprocess.run(["cmp", str(expected), str(disk)], check=True)

    # a paused domain stays paused, and its instant is read
    raw.suspend()
    time.sleep(1.1)
    row = backup(state_dir, dest, raw.name())
    assert row["method"] == "backup-api" and raw.state()[0] == 3  # paused
    raw.resume()
    assert job_leftovers(hypervisor, raw.name(), domain_factory.workdir) == []


def test_backup_api_asked_for_a_raw_file_reads_it_in_full_without_a_checkpoint(
    domain_factory: DomainFactory, hypervisor: Hypervisor, state_dir: Path, dest: Path
) -> None:
    raw = domain_factory.create([DiskSpec("raw", 8 * MiB)], hint="apiraw", start=True)
    row = backup(state_dir, dest, raw.name(), "--method", "backup-api")
    assert row["method"] == "backup-api", row
    manifest = json.loads((Path(row["backup"]) / "manifest.json").read_text())
    assert "checkpoint" not in manifest  # a raw file keeps no bitmap
    assert hypervisor.domain(raw.name()).backups.checkpoints() == []
    # auto falls back to the external snapshot: it reads as much, and needs no job
    row = backup(state_dir, dest, raw.name())
    assert row["method"] == "snapshot", row


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_backup_ended_mid_job_leaves_nothing_once_cleaned(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
    signum: int,
) -> None:
    raw = domain_factory.create([DiskSpec("qcow2", 64 * MiB)], hint="apikill", start=True)
    for offset in range(0, 64 * MiB, 8 * MiB):
        guest_write(raw, "virtio-disk0", 1 + offset // MiB, offset, 4 * MiB)
    dom = hypervisor.domain(raw.name())
    status = interrupted_mid_job(dom, state_dir, dest, signum)
    left = job_leftovers(hypervisor, raw.name(), domain_factory.workdir)
    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
        assert "job" in left and any(name.endswith(".scratch") for name in left), left
        cleaned = virtbackup_in(state_dir, "clean")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert "end the backup job" in cleaned.stdout + cleaned.stderr
    else:  # the run ends its job itself on the way out
        assert status == 130 and left == [], left
        assert list_journals(state_dir) == []
    assert job_leftovers(hypervisor, raw.name(), domain_factory.workdir) == []
    assert raw.state()[0] == 1  # still running

    expected = reference(raw, domain_factory.workdir / "apikill-disk0.qcow2", tmp_path / "r.raw")
    row = backup(state_dir, dest, raw.name())
    assert row["method"] == "backup-api", row
    disk = restored_disk(state_dir, Path(row["backup"]), tmp_path / "r")
    subprocess.run(["cmp", str(expected), str(disk)], check=True)


def test_list_says_which_domains_get_incremental_reads_and_how_to_get_them(
    domain_factory: DomainFactory, state_dir: Path
) -> None:
    qcow2 = domain_factory.create([DiskSpec("qcow2", 8 * MiB)], hint="lq", start=True)
    raw = domain_factory.create([DiskSpec("raw", 8 * MiB)], hint="lr", start=True)
    names = [qcow2.name(), raw.name()]

    def planned(*args: str) -> dict[str, dict[str, Any]]:
        result = virtbackup_in(state_dir, "list", *names, "--json", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        return {d["name"]: d for d in json.loads(result.stdout)["domains"]}

    plans = planned("--layout", "repository")
    assert plans[qcow2.name()]["method"] == "backup-api"
    assert "only what changed" in plans[qcow2.name()]["disks"][0]["reason"]
    assert plans[raw.name()]["method"] == "snapshot"
    assert (
        "everything is read: vda not a qcow2 file (convert to qcow2"
        in (plans[raw.name()]["reason"])
    )
    # without --layout, the layout backups are written in: the repository
    assert planned()[qcow2.name()]["method"] == "backup-api"
    # stream backups are read whole whatever the method: auto keeps to the snapshot
    assert {d["method"] for d in planned("--layout", "stream").values()} == {"snapshot"}
