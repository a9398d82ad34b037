"""The snapshot and shutdown methods on the tiny real guest (qemu-ga, ACPI power-off).

A quiesced snapshot is told from a crash-consistent one by the frozen image itself: a
mounted ext4 carries the "needs_recovery" mark on disk, except while it is frozen, when
the kernel has flushed its journal and cleared the mark.
"""

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from consistency_helpers import overlays_in, planned, snapshot_of
from harness.guest import (
    GUEST_MOUNT,
    TinyGuestFactory,
    disk_as_raw,
    fs_is_clean,
    read_file_from_disk,
)

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import list_journals
from virtbackup.core.model import Method
from virtbackup.core.progress import RecordingSteps
from virtbackup.engine.methods.image_source import (
    Consistency,
    ConsistencyOptions,
    Quiesce,
    SourceContext,
)
from virtbackup.engine.methods.stable_images import stable_images

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]


def copy_sparse(source: Path, target: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    return target


def test_quiesced_snapshot_freezes_and_thaws_through_the_agent(
    tiny_guest: TinyGuestFactory, hypervisor: Hypervisor, libvirt: Any, tmp_path: Path
) -> None:
    guest = tiny_guest("raw", discard=False)
    name = guest.dom.name()
    before = snapshot_of(libvirt, guest.dom)
    state_dir = tmp_path / "state"
    # Written just before the backup and not synced: only the freeze puts it on disk.
    code, out = guest.exec(f"echo in-the-backup > {GUEST_MOUNT}/note")
    assert code == 0, out
    steps = RecordingSteps()

    with stable_images(
        hypervisor,
        planned(hypervisor, name, Method.SNAPSHOT, ["vda"]),
        SourceContext(state_dir=state_dir, steps=steps),
    ) as window:
        assert window.consistency == Consistency.QUIESCED
        assert guest.agent("guest-fsfreeze-status") == "thawed"  # thawed at once
        quiesced = copy_sparse(window.images[0].path, tmp_path / "quiesced.raw")
        code, out = guest.exec(f"echo after-the-snapshot > {GUEST_MOUNT}/during && sync")
        assert code == 0, out

    assert snapshot_of(libvirt, guest.dom) == before
    assert guest.agent("guest-fsfreeze-status") == "thawed"
    assert overlays_in(guest.disk.parent) == [] and list_journals(state_dir) == []
    assert not steps.warnings
    clean, report = fs_is_clean(quiesced)
    assert clean, report  # frozen: journal flushed, no recovery needed
    assert read_file_from_disk(quiesced, "/note") == b"in-the-backup\n"
    with pytest.raises(FileNotFoundError):
        read_file_from_disk(quiesced, "/during")  # written after the snapshot

    # The same guest without quiescing: the image is only crash-consistent.
    with stable_images(
        hypervisor,
        planned(hypervisor, name, Method.SNAPSHOT, ["vda"]),
        SourceContext(ConsistencyOptions(quiesce=Quiesce.NEVER), state_dir=state_dir),
    ) as window:
        assert window.consistency == Consistency.CRASH
        crash = copy_sparse(window.images[0].path, tmp_path / "crash.raw")
    clean, report = fs_is_clean(crash)
    assert not clean and "needs_recovery" in report

    # What the guest wrote during the first backup went back into its image.
    guest.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
    guest.wait_state(libvirt.VIR_DOMAIN_SHUTOFF, timeout=120)
    assert read_file_from_disk(guest.disk, "/during") == b"after-the-snapshot\n"


def test_shutdown_method_shuts_down_gracefully_and_restarts(
    tiny_guest: TinyGuestFactory, hypervisor: Hypervisor, libvirt: Any, tmp_path: Path
) -> None:
    guest = tiny_guest("qcow2")
    before = snapshot_of(libvirt, guest.dom)
    code, out = guest.exec(f"echo before-shutdown > {GUEST_MOUNT}/note")
    assert code == 0, out
    steps = RecordingSteps()
    options = ConsistencyOptions(shutdown_timeout=180)

    with stable_images(
        hypervisor,
        planned(hypervisor, guest.dom.name(), Method.SHUTDOWN, ["vda"]),
        SourceContext(options, state_dir=tmp_path / "state", steps=steps),
    ) as window:
        state, reason = guest.dom.state()
        assert state == libvirt.VIR_DOMAIN_SHUTOFF
        assert reason == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN  # by the guest, not destroyed
        assert window.consistency == Consistency.OFFLINE
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        raw = disk_as_raw(window.images[0].path, window.images[0].format, scratch)
        clean, report = fs_is_clean(raw)
        assert clean, report
        assert read_file_from_disk(raw, "/note") == b"before-shutdown\n"
        shutil.rmtree(scratch)

    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert snapshot_of(libvirt, guest.dom)["live"] == before["live"]
    assert not any("forcing" in text for _, text in steps.warnings)
    guest.wait_agent()
    assert guest.exec("echo back")[1] == "back\n"


@pytest.fixture
def small_overlay_fs(tmp_path: Path) -> Any:
    """A 4 MiB ext4 filesystem on a loop device for the overlays, removed after the test."""
    image = tmp_path / "overlays.ext4"
    mountpoint = Path(f"/var/lib/libvirt/images/vbtest-ovlfs-{tmp_path.name}")
    with open(image, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mountpoint.mkdir(mode=0o755)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-d", str(mountpoint)], check=False)
        shutil.rmtree(mountpoint, ignore_errors=True)


def test_an_overlay_filling_up_pauses_the_guest_and_the_run_brings_it_back(
    tiny_guest: TinyGuestFactory,
    hypervisor: Hypervisor,
    libvirt: Any,
    tmp_path: Path,
    small_overlay_fs: Path,
) -> None:
    guest = tiny_guest("qcow2", size=64 * 1024 * 1024)
    before = snapshot_of(libvirt, guest.dom)
    options = ConsistencyOptions(overlay_dir=small_overlay_fs, overlay_min_free=0)
    with stable_images(
        hypervisor,
        planned(hypervisor, guest.dom.name(), Method.SNAPSHOT, ["vda"]),
        SourceContext(options, state_dir=tmp_path / "state"),
    ):
        # More than the overlay filesystem holds: qemu stops the guest on ENOSPC.
        # (qemu writes zeros like any data: no detect-zeroes on this disk.)
        guest.spawn(
            f"dd if=/dev/zero of={GUEST_MOUNT}/big bs=1M count=12 && sync "
            f"&& touch {GUEST_MOUNT}/big.done && sync"
        )
        guest.wait_state(libvirt.VIR_DOMAIN_PAUSED, timeout=180)
        assert guest.dom.state()[1] == libvirt.VIR_DOMAIN_PAUSED_IOERROR

    # Back on its image, resumed; the write qemu held back completes there.
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert snapshot_of(libvirt, guest.dom)["live"] == before["live"]
    assert overlays_in(small_overlay_fs) == []
    wait_done = f"while [ ! -e {GUEST_MOUNT}/big.done ]; do usleep 200000; done"
    code, out = guest.exec(wait_done, timeout=180)
    assert code == 0, out
    # Read back from the disk, not from the guest's page cache.
    code, out = guest.exec(f"echo 3 > /proc/sys/vm/drop_caches; sha256sum {GUEST_MOUNT}/big")
    assert code == 0, out
    assert out.split()[0] == hashlib.sha256(bytes(12 * 1024 * 1024)).hexdigest()
