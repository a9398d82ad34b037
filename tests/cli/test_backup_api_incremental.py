"""Incremental backups through libvirt's checkpoints, end to end on a real running
domain: each generation reads only the chunks written since the one before, restores
byte-identical to the disk at its instant; a checkpoint deleted by hand or a resized
disk means a full read with the reason in the summary; only the newest checkpoints are
kept; the domain runs throughout."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from age_helpers import make_key_pair
from backup_api_helpers import Generations, full_reads, reference, restored_disk
from consistency_helpers import guest_write
from harness.cli import virtbackup
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.backup_job import (
    KEEP_CHECKPOINTS,
    SOCKET_DIR,
    checkpoint_xml,
    is_checkpoint_name,
    pull_backup_xml,
)
from virtbackup.core.verify_record import VerifyRecord, build_verify_record
from virtbackup.engine.stores.change_base import SEALED_BASES_DIR
from virtbackup.engine.stores.store import VERIFIED

MiB = 1024 * 1024
CHUNK = 4 * MiB


@pytest.fixture
def small_domain(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> Callable[[str], Generations]:
    """A running domain with a 16 MiB qcow2 disk, 6 MiB of it written, and its
    generations (none yet)."""

    def make(hint: str) -> Generations:
        raw = domain_factory.create([DiskSpec("qcow2", 16 * MiB)], hint=hint, start=True)
        guest_write(raw, "virtio-disk0", 1, 0, 6 * MiB)
        image = domain_factory.workdir / f"{hint}-disk0.qcow2"
        return Generations(raw, image, state_dir, dest, tmp_path)

    return make


def test_incremental_generations_read_only_what_changed(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    raw = domain_factory.create([DiskSpec("qcow2", 32 * MiB)], hint="inc", start=True)
    dom = hypervisor.domain(raw.name())
    disk = "virtio-disk0"
    guest_write(raw, disk, 1, 0, 8 * MiB)
    guest_write(raw, disk, 2, 20 * MiB, 4 * MiB)
    runs = Generations(raw, domain_factory.workdir / "inc-disk0.qcow2", state_dir, dest, tmp_path)

    row, read = runs.back_up()
    assert full_reads(row) == []  # a first backup reads everything, nothing to warn about
    assert read == 12 * MiB  # the allocated chunks only
    assert runs.checkpoint_of(0) in dom.backups.checkpoints()

    guest_write(raw, disk, 7, 1 * MiB, 2 * MiB)  # chunk 0
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == CHUNK

    guest_write(raw, disk, 5, 9 * MiB, 1 * MiB)  # chunk 2
    guest_write(raw, disk, 3, 30 * MiB, 1 * MiB)  # chunk 7, a hole until now
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == 2 * CHUNK

    guest_write(raw, disk, 4, 15 * MiB, 2 * MiB)  # chunks 3 and 4
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == 2 * CHUNK

    row, read = runs.back_up()  # nothing changed
    assert full_reads(row) == [] and read == 0
    runs.check_all_restore()

    # only our newest checkpoints are kept, the newest backup's among them
    ours = [name for name in dom.backups.checkpoints() if is_checkpoint_name(name)]
    assert len(ours) == KEEP_CHECKPOINTS and ours[-1] == runs.checkpoint_of(4)

    # the newest backup's checkpoint deleted by hand: everything is read, and why
    dom.backups.delete_checkpoint(runs.checkpoint_of(4))
    guest_write(raw, disk, 6, 2 * MiB, 1 * MiB)
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert f"checkpoint {runs.checkpoint_of(4)} of" in why and "is gone" in why
    assert read == 7 * CHUNK  # every allocated chunk: 0 to 5 and 7
    row, read = runs.back_up()  # and the next one is incremental again
    assert full_reads(row) == [] and read == 0

    # a disk resized since: read in full, and why
    raw.blockResize("vda", 40 * MiB, 1)  # VIR_DOMAIN_BLOCK_RESIZE_BYTES
    guest_write(raw, disk, 8, 36 * MiB, 1 * MiB)
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert "resized from 33554432 to 41943040 bytes" in why, why
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == 0

    runs.check_all_restore()
    assert raw.state()[0] == 1  # running throughout


def test_an_unusable_newest_backup_means_a_full_read_and_why(
    small_domain: Callable[[str], Generations],
) -> None:
    runs = small_domain("bad")
    raw, disk = runs.raw, "virtio-disk0"
    runs.back_up()
    guest_write(raw, disk, 2, 1 * MiB, 1 * MiB)
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == CHUNK

    # its index damaged: not trusted, every allocated chunk read again
    index = runs.made[1][0] / "vda.raw.idx"
    index.write_bytes(index.read_bytes()[: -len("ab/" + "0" * 64 + "\n")])
    guest_write(raw, disk, 3, 9 * MiB, 1 * MiB)
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert "the index of" in why and "is unusable" in why and "vda.raw.idx" in why, why
    assert read == 3 * CHUNK

    # failed verification: not trusted either
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == 0
    record = VerifyRecord(datetime.now(UTC), False, "a chunk is damaged", "0.1.0")
    (runs.made[3][0] / VERIFIED).write_text(build_verify_record(record))
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert "failed verification" in why and read == 3 * CHUNK

    for number in (2, 4):  # the generations read in full after a doubt
        backup, expected = runs.made[number]
        restored = restored_disk(runs.state_dir, backup, runs.tmp / f"check{number}")
        subprocess.run(["cmp", str(expected), str(restored)], check=True)


def test_two_disks_each_read_only_where_they_changed(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    raw = domain_factory.create(
        [DiskSpec("qcow2", 16 * MiB), DiskSpec("qcow2", 8 * MiB)], hint="two", start=True
    )
    guest_write(raw, "virtio-disk0", 1, 0, 5 * MiB)
    guest_write(raw, "virtio-disk1", 2, 0, 3 * MiB)
    images = [domain_factory.workdir / f"two-disk{n}.qcow2" for n in (0, 1)]
    made = []
    for generation in range(2):
        if generation:
            guest_write(raw, "virtio-disk1", 9, 6 * MiB, 1 * MiB)  # vdb's chunk 1 only
        expected = [
            reference(raw, image, tmp_path / f"{generation}-{n}.raw")
            for n, image in enumerate(images)
        ]
        time.sleep(1.1)
        result = virtbackup(
            "-v",
            "backup",
            raw.name(),
            "--dest",
            str(dest),
            "--layout",
            "repository",
            "--json",
            state_dir=state_dir,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (row,) = json.loads(result.stdout)["domains"]
        found = re.findall(rf"{re.escape(raw.name())} (vd[ab]): (\d+) bytes read", result.stderr)
        read = dict(found)
        made.append((Path(row["backup"]), expected))
    assert read == {"vda": "0", "vdb": str(CHUNK)}
    for generation, (backup, expected) in enumerate(made):
        result = virtbackup(
            "restore", str(backup), "--to", str(tmp_path / f"r{generation}"), state_dir=state_dir
        )
        assert result.returncode == 0, result.stdout + result.stderr
        for target, reference_copy in zip(("vda", "vdb"), expected, strict=True):
            restored = tmp_path / f"r{generation}" / f"{target}.raw"
            subprocess.run(["cmp", str(reference_copy), str(restored)], check=True)


def test_a_domain_killed_since_its_last_backup_is_never_read_from_a_stale_bitmap(
    small_domain: Callable[[str], Generations],
) -> None:
    runs = small_domain("kill")
    raw, disk = runs.raw, "virtio-disk0"
    runs.back_up()
    guest_write(raw, disk, 2, 9 * MiB, 1 * MiB)
    # a graceful stop writes the bitmaps back into the image: they stay trusted
    raw.destroy()
    raw.create()
    guest_write(raw, disk, 3, 13 * MiB, 1 * MiB)
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == 2 * CHUNK  # chunks 2 and 3

    # qemu killed: its bitmaps were never written back, they are inconsistent
    guest_write(raw, disk, 4, 1 * MiB, 1 * MiB)
    pid = int(Path(f"/run/libvirt/qemu/{raw.name()}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while raw.isActive():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    raw.create()
    guest_write(raw, disk, 5, 5 * MiB, 1 * MiB)
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert "libvirt cannot tell the changes since" in why, why
    assert read == 4 * CHUNK  # every allocated chunk
    row, read = runs.back_up()  # a fresh checkpoint: incremental again
    assert full_reads(row) == [] and read == 0
    runs.check_all_restore()


def test_another_tools_checkpoint_and_a_users_external_snapshot(
    small_domain: Callable[[str], Generations],
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
) -> None:
    runs = small_domain("mix")
    raw, disk, image = runs.raw, "virtio-disk0", runs.image
    dom = hypervisor.domain(raw.name())
    runs.back_up()

    # another tool's checkpoint in between: ours still tells all changes, theirs stays
    socket = Path(SOCKET_DIR) / f"vbtest-{raw.name()[-12:]}.sock"
    theirs = domain_factory.workdir / "theirs.scratch"
    job = pull_backup_xml(str(socket), {"vda": str(theirs)}, ["vda"])
    dom.backups.begin_pull(job, checkpoint_xml("theirs-1", ["vda"], ["vda"]))
    dom.backups.abort()
    guest_write(raw, disk, 2, 9 * MiB, 1 * MiB)
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == CHUNK
    assert "theirs-1" in dom.backups.checkpoints()

    # the user's external snapshot: the disk is another image now, read in full
    overlay = domain_factory.workdir / "mix-user-overlay.qcow2"
    subprocess.run(
        [
            "virsh",
            "-c",
            "qemu:///system",
            "snapshot-create-as",
            raw.name(),
            "user-snap",
            "--disk-only",
            "--no-metadata",
            "--diskspec",
            f"vda,file={overlay}",
        ],
        check=True,
        capture_output=True,
    )
    guest_write(raw, disk, 3, 13 * MiB, 1 * MiB)
    runs.image = overlay  # the guest's view is the chain under it
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert f"it is {overlay} now, {image} in" in why, why
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == 0
    runs.check_all_restore()


def test_encrypted_repository_reads_only_the_changes_from_the_hosts_record(
    small_domain: Callable[[str], Generations], state_dir: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    runs = small_domain("enc")
    runs.backup_options = ("--encrypt", str(keys.recipients))
    runs.restore_options = ("--identity", str(keys.identity))
    disk = "virtio-disk0"

    row, read = runs.back_up()
    assert full_reads(row) == [] and read == 2 * CHUNK
    public = json.loads((runs.made[0][0] / "manifest.json").read_text())
    assert "encryption" in public and "checkpoint" not in public  # sealed, as before

    guest_write(runs.raw, disk, 8, 9 * MiB, 1 * MiB)  # chunk 2
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == CHUNK
    runs.check_all_restore()

    # this host's record of the newest backup gone (a new state directory): a full read
    (record,) = (state_dir / SEALED_BASES_DIR).iterdir()
    record.unlink()
    guest_write(runs.raw, disk, 9, 13 * MiB, 1 * MiB)  # chunk 3
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert "is encrypted and this host keeps no record of its checkpoint" in why
    assert read == 4 * CHUNK
    runs.check_restores(2)

    # the newest backup's index replaced in DEST by an older one: the host's record
    # does not bind it, a full read
    index = runs.made[2][0] / "vda.raw.idx"
    index.write_bytes((runs.made[0][0] / "vda.raw.idx").read_bytes())
    guest_write(runs.raw, disk, 10, 1 * MiB, 1 * MiB)  # chunk 0
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert "the index of" in why and "is unusable" in why
    assert read == 4 * CHUNK
    runs.check_restores(3)

    # a newer backup planted in DEST, its public manifest claiming the backup API: the
    # host's record is of another stamp, a full read
    newest = runs.made[3][0]
    time.sleep(1.1)  # a stamp after the newest's
    planted = newest.parent / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    shutil.copytree(newest, planted)
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert f"{planted.name} is encrypted and this host keeps no record" in why, why
    assert read == 4 * CHUNK


def test_a_checkpoint_made_later_under_our_name_is_not_trusted(
    small_domain: Callable[[str], Generations],
    hypervisor: Hypervisor,
    domain_factory: DomainFactory,
) -> None:
    runs = small_domain("imp")
    raw, disk = runs.raw, "virtio-disk0"
    dom = hypervisor.domain(raw.name())
    runs.back_up()
    ours = runs.checkpoint_of(0)
    guest_write(raw, disk, 2, 9 * MiB, 1 * MiB)  # only ours tracks this write
    dom.backups.delete_checkpoint(ours)
    time.sleep(2.5)  # made well after that backup ended
    socket = Path(SOCKET_DIR) / f"vbtest-{raw.name()[-12:]}.sock"
    job = pull_backup_xml(
        str(socket), {"vda": str(domain_factory.workdir / "imp.scratch")}, ["vda"]
    )
    dom.backups.begin_pull(job, checkpoint_xml(ours, ["vda"], ["vda"]))  # another's, our name
    dom.backups.abort()
    guest_write(raw, disk, 3, 13 * MiB, 1 * MiB)
    row, _read = runs.back_up()
    (why,) = full_reads(row)
    assert f"checkpoint {ours} was made at" in why and "another of that name" in why, why
    runs.check_all_restore()  # the write only our checkpoint saw is in the backup
