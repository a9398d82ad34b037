"""Which disks get incremental reads, and what the others need: plan in, verdict out."""

import pytest

from virtbackup.core.incremental import incremental_reads
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.planning import PlanOptions, plan_domain

QCOW2 = DiskFacts("vda", "disk", "file", "/img/a.qcow2", "qcow2")
RAW = DiskFacts("vdb", "disk", "file", "/img/b.raw", "raw")
BLOCK = DiskFacts("vdc", "disk", "block", "/dev/vg/c", "raw", on_lv=True)


def verdict(
    *disks: DiskFacts,
    state: DomainState = DomainState.RUNNING,
    repository: bool = True,
    compat: str | None = None,
    method: Method = Method.AUTO,
    target: str = "vda",
) -> tuple[bool, str, str | None]:
    facts = DomainFacts("web1", "uuid-1", state, True, disks)
    plan = plan_domain(facts, PlanOptions(method=method, backup_api=repository))
    disk = next(d for d in plan.disks if d.disk.target == target)
    found = incremental_reads(plan, disk, repository, compat)
    return found.reads_changes, found.why, found.fix


@pytest.mark.parametrize(
    ("state", "words"),
    [
        (DomainState.RUNNING, "through libvirt's backup API"),
        (DomainState.PAUSED, "through libvirt's backup API"),
        (DomainState.SHUTOFF, "through qemu-nbd, once a backup of the running domain"),
    ],
)
def test_qcow2_files_in_the_repository_read_only_their_changes(
    state: DomainState, words: str
) -> None:
    reads, why, fix = verdict(QCOW2, state=state)
    assert reads and words in why and fix is None


@pytest.mark.parametrize(
    ("disk", "what"),
    [(RAW, "a raw image tracks no changes"), (BLOCK, "a block device on LVM tracks no changes")],
)
def test_raw_images_and_block_devices_are_told_to_become_qcow2(disk: DiskFacts, what: str) -> None:
    reads, why, fix = verdict(disk, target=disk.target)
    assert not reads and why.startswith(what)
    assert fix == (
        f"make it a qcow2 file while shut off: qemu-img convert -O qcow2 -o compat=1.1 "
        f"{disk.path} NEW.qcow2, then point the disk at NEW.qcow2"
    )


def test_a_qcow2_beside_a_raw_disk_is_read_whole_with_the_snapshot_method() -> None:
    reads, why, fix = verdict(QCOW2, RAW)
    assert not reads and why == "the domain is backed up by snapshot: read whole"
    assert fix == "make every disk of the domain a qcow2 file for the backup API"


def test_compat_0_10_and_stream_backups() -> None:
    reads, why, fix = verdict(QCOW2, compat="0.10")
    assert not reads and "compat 0.10" in why
    assert fix == "while shut off: qemu-img amend -f qcow2 -o compat=1.1 /img/a.qcow2"
    reads, why, fix = verdict(QCOW2, repository=False)
    assert not reads and fix == "use --layout repository"
