"""A shut-off qcow2 domain read incrementally from its images' bitmaps, end to end: after
a backup of the running domain and a shutdown, writes made offline are the only chunks
read; the offline backup makes the next checkpoint itself, which a later offline or
running backup uses; another tool's checkpoint is left alone; every generation restores
byte-identical. Images that cannot tell
their changes (replaced, checkpoint metadata gone, bitmap inconsistent) are read in full
with the reason; a qemu-nbd that fails fails the domain in one line, a killed run's
qemu-nbd is ended by `clean`, and a run ended by SIGTERM ends its qemu-nbd itself."""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_api_helpers import Generations, full_reads
from consistency_helpers import guest_write
from harness.cli import start_virtbackup, virtbackup
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters import qemu_nbd
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.backup_job import SOCKET_DIR, is_checkpoint_name

pytestmark = pytest.mark.libvirt
MiB = 1024 * 1024
CHUNK = 4 * MiB
DISK = "virtio-disk0"


@pytest.fixture
def runs(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> Iterator[Generations]:
    """A running domain with a 16 MiB qcow2 disk, 6 MiB of it written, backed up once
    through the backup API, then stopped (qemu saves the checkpoint's bitmap)."""
    raw = domain_factory.create([DiskSpec("qcow2", 16 * MiB)], hint="offinc", start=True)
    guest_write(raw, DISK, 1, 0, 6 * MiB)
    image = domain_factory.workdir / "offinc-disk0.qcow2"
    generations = Generations(raw, image, state_dir, dest, tmp_path)
    generations.back_up()
    raw.destroy()
    yield generations
    assert _our_sockets(raw) == [], "a socket or qemu-nbd was left behind"


def _our_sockets(raw: Any) -> list[str]:
    left = [str(p) for p in Path(SOCKET_DIR).glob(f"{raw.UUIDString()}-*")]
    return left + [str(pid) for path in left for pid in qemu_nbd.servers_on(path)]


def wait_until_served(raw: Any, running: subprocess.Popen[bytes]) -> None:
    """Until the backup `running` reads the domain's images through qemu-nbd."""
    deadline = time.monotonic() + 60
    while not _our_sockets(raw):
        assert running.poll() is None, "the backup ended before qemu-nbd was seen"
        assert time.monotonic() < deadline, "qemu-nbd did not start"
        time.sleep(0.05)
    time.sleep(1)  # reading


def offline_write(image: Path, pattern: int, offset: int, length: int) -> None:
    """Write into the shut-off domain's image through qemu's block layer (bitmaps see it)."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(image)],
        check=True,
        capture_output=True,
    )


def test_offline_writes_are_the_only_chunks_read_and_checkpoints_carry_on(
    runs: Generations, hypervisor: Hypervisor
) -> None:
    raw, image = runs.raw, runs.image
    dom = hypervisor.domain(raw.name())
    offline_write(image, 7, 9 * MiB, 2 * MiB)  # chunk 2
    row, read = runs.back_up("offline")
    assert full_reads(row) == [] and read == CHUNK
    made = runs.checkpoint_of(1)
    assert made != runs.checkpoint_of(0) and made in dom.backups.checkpoints()
    assert made in [b.name for b in qemu_nbd.bitmaps(str(image))]

    row, read = runs.back_up("offline")  # from the checkpoint the offline backup made
    assert full_reads(row) == [] and read == 0
    offline_write(image, 8, 13 * MiB, 1 * MiB)  # chunk 3
    row, read = runs.back_up("offline")
    assert full_reads(row) == [] and read == CHUNK

    raw.create()  # and running again: the backup API uses the offline checkpoint
    # another tool's checkpoint: neither trusted nor removed, and ours stay whole
    subprocess.run(
        ["virsh", "-c", "qemu:///system", "checkpoint-create-as", raw.name(), "other"],
        check=True,
        capture_output=True,
    )
    guest_write(raw, DISK, 5, 1 * MiB, 1 * MiB)  # chunk 0
    row, read = runs.back_up()
    assert full_reads(row) == [] and read == CHUNK
    runs.check_all_restore()

    # shut off again: five of ours made, the oldest forgotten offline, bitmap and all
    raw.destroy()
    runs.back_up("offline")
    ours = [c for c in dom.backups.checkpoints() if is_checkpoint_name(c)]
    assert len(ours) == 4 and runs.checkpoint_of(1) not in ours
    assert "other" in dom.backups.checkpoints()
    left = [b.name for b in qemu_nbd.bitmaps(str(image))]
    assert sorted(left) == sorted([*ours, "other"])


def test_images_that_cannot_tell_their_changes_are_read_in_full(
    runs: Generations, hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    raw, image = runs.raw, runs.image

    # the image replaced by a copy (a restore, a conversion): libvirt still has the
    # checkpoint, the image has no bitmap: read in full, stored as the image it is
    copy = domain_factory.workdir / "offinc-copy.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(image), str(copy)], check=True)
    os.replace(copy, image)
    offline_write(image, 3, 9 * MiB, 1 * MiB)
    row, read = runs.back_up("offline")
    (why,) = full_reads(row)
    assert f"has no bitmap {runs.checkpoint_of(0)}" in why, why
    assert (Path(row["backup"]) / "vda.qcow2.idx").exists()
    # ... and the running domain's next backup reads in full too, and says why
    raw.create()
    row, read = runs.back_up()
    (why,) = full_reads(row)
    assert "was made without a checkpoint (offline)" in why, why

    # qemu killed: the bitmap it loaded from the image is inconsistent, never trusted
    raw.destroy()
    raw.create()
    guest_write(raw, DISK, 4, 5 * MiB, 1 * MiB)
    os.kill(int(Path(f"/run/libvirt/qemu/{raw.name()}.pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while raw.isActive():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    row, read = runs.back_up("offline")
    (why,) = full_reads(row)
    assert "is inconsistent" in why, why

    # its bitmap disabled by hand: it records no writes, never trusted
    raw.create()
    runs.back_up()  # full: the newest backup has no checkpoint
    raw.destroy()
    disabled = runs.checkpoint_of(4)
    subprocess.run(["qemu-img", "bitmap", "--disable", str(image), disabled], check=True)
    row, read = runs.back_up("offline")
    (why,) = full_reads(row)
    assert f"bitmap {disabled} in {image} is disabled" in why, why

    # the domain defined anew without its checkpoint metadata (migrated, redefined)
    raw.create()
    runs.back_up()
    raw.destroy()
    xml = raw.XMLDesc(2)  # VIR_DOMAIN_XML_INACTIVE
    raw.undefineFlags(16)  # VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    raw = runs.raw = domain_factory.define(xml)
    row, read = runs.back_up("offline")
    (why,) = full_reads(row)
    assert f"checkpoint {runs.checkpoint_of(6)} of" in why and "is gone" in why, why
    assert hypervisor.domain(raw.name()).backups.checkpoints() == []

    # a read-only disk: no checkpoint is written into an image others may use
    raw.create()
    runs.back_up()
    raw.destroy()
    raw = runs.raw = domain_factory.define(
        raw.XMLDesc(2).replace("</disk>", "<readonly/></disk>", 1)
    )
    row, read = runs.back_up("offline")
    assert full_reads(row) == ["read in full: vda read-only or shareable"], row


def test_qemu_nbd_failing_or_its_run_killed_leaves_nothing_behind(
    runs: Generations, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    raw, image = runs.raw, runs.image
    # a qemu-nbd that cannot serve: the domain fails in one line, nothing is left
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "qemu-nbd").write_text("#!/bin/sh\necho 'qemu-nbd: no such export' >&2\nexit 1\n")
    (fake / "qemu-nbd").chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    args = ["backup", raw.name(), "--dest", str(dest), "--layout", "repository"]
    result = virtbackup(*args, state_dir=state_dir, env={"PATH": path})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "qemu-nbd cannot serve" in result.stdout + result.stderr
    assert "qemu-nbd: no such export" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and _our_sockets(raw) == []

    # killed while qemu-nbd serves: the server outlives the run until `clean`
    offline_write(image, 7, 8 * MiB, 8 * MiB)  # chunks 2 and 3: 8 s at 1 MiB/s
    running = start_virtbackup(state_dir, *args, "--bwlimit", "1M")
    try:
        wait_until_served(raw, running)
        running.kill()
    finally:
        running.communicate()
    assert _our_sockets(raw) != []  # the server outlives the killed run
    result = virtbackup("clean", state_dir=state_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _our_sockets(raw) == []
    row, read = runs.back_up("offline")  # and the next backup works
    assert full_reads(row) == [] and read == 2 * CHUNK
    runs.check_all_restore()

    # bitmaps that cannot be read: the images are read directly, and why
    (fake / "qemu-nbd").unlink()
    (fake / "qemu-img").write_text(
        '#!/bin/sh\n[ "$1 $2" = "info -U" ] && { echo "cannot open" >&2; exit 1; }\n'
        'exec /usr/bin/qemu-img "$@"\n'
    )
    (fake / "qemu-img").chmod(0o755)
    result = virtbackup(*args, "--json", state_dir=state_dir, env={"PATH": path})
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    (why,) = full_reads(row)
    assert f"the bitmaps of {image} cannot be read" in why and "cannot open" in why, why


def test_sigterm_while_qemu_nbd_serves_ends_it_with_the_run(
    runs: Generations, state_dir: Path, dest: Path
) -> None:
    raw, image = runs.raw, runs.image
    offline_write(image, 9, 8 * MiB, 8 * MiB)  # 8 s to read at 1 MiB/s
    args = ["backup", raw.name(), "--dest", str(dest), "--layout", "repository"]
    running = start_virtbackup(state_dir, *args, "--bwlimit", "1M")
    try:
        wait_until_served(raw, running)
        running.send_signal(signal.SIGTERM)
        _, stderr = running.communicate(timeout=60)
    finally:
        running.kill()
        running.communicate()
    assert running.returncode == 130, stderr
    assert _our_sockets(raw) == []  # ended by the run itself, not left for clean
    assert not raw.isActive()
    cleaned = virtbackup("clean", "--dry-run", state_dir=state_dir)
    assert cleaned.returncode == 0 and "qemu-nbd" not in cleaned.stdout, cleaned.stdout
    row, read = runs.back_up("offline")  # the next backup reads the changes since the last
    assert full_reads(row) == [] and read == 2 * CHUNK
    runs.check_all_restore()
