"""The snapshot, shutdown and offline methods against the real libvirtd and qemu.

The domains idle in the BIOS: they run, pause, take external snapshots and merge them
back for real. Writes "by the guest" go through qemu (HMP qemu-io on the disk device),
so they land in the active layer exactly as a guest's would.
"""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from consistency_helpers import (
    MiB,
    guest_write,
    overlays_in,
    planned,
    read_raw,
    sha256,
    snapshot_of,
)
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import list_journals
from virtbackup.adapters.locks import domain_lock
from virtbackup.core.consistency_errors import (
    DomainChanged,
    OverlaySpaceError,
    ShutdownTimeout,
    SnapshotFailed,
)
from virtbackup.core.errors import LockHeld
from virtbackup.core.model import Method
from virtbackup.core.progress import RecordingSteps
from virtbackup.engine.methods.image_source import (
    Consistency,
    ConsistencyOptions,
    Quiesce,
    SourceContext,
)
from virtbackup.engine.methods.stable_images import stable_images

pytestmark = pytest.mark.libvirt


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_snapshot_of_a_running_domain_ends_on_its_original_chain(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create(
        [DiskSpec("raw"), DiskSpec("qcow2"), DiskSpec("chain"), DiskSpec("empty-cdrom")],
        start=True,
    )
    before = snapshot_of(libvirt, dom)
    raw_image = Path(before["live"][0][2])
    chain_base = Path(before["live"][2][4][0])
    base_digest = sha256(chain_base)
    # Data the backup must contain: written before the snapshot.
    guest_write(dom, "virtio-disk0", 0x11, 0, MiB)
    steps = RecordingSteps()

    with stable_images(
        hypervisor,
        planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda", "vdb", "vdc"]),
        SourceContext(state_dir=state_dir, steps=steps),
    ) as window:
        assert window.method == Method.SNAPSHOT
        assert window.consistency == Consistency.CRASH  # no agent in the BIOS
        assert [i.target for i in window.images] == ["vda", "vdb", "vdc"]
        assert [str(i.path) for i in window.images] == [d[2] for d in before["live"][:3]]
        assert window.images[2].backing_chain == (str(chain_base),)
        during = snapshot_of(libvirt, dom)
        assert len(overlays_in(domain_factory.workdir)) == 3
        for disk in during["live"][:3]:
            assert ".virtbackup-" in disk[2]
        assert during["live"][3] == before["live"][3]  # the cdrom has no overlay
        # The journal holds the undo while the window is open.
        assert len(list_journals(state_dir)) == 1
        # The "backup": the image as it was at the snapshot, while the guest writes on.
        frozen = sha256(raw_image)
        backup = state_dir / "vda.copy"
        subprocess.run(["cp", "--sparse=always", str(raw_image), str(backup)], check=True)
        guest_write(dom, "virtio-disk0", 0x22, MiB, MiB)
        assert sha256(raw_image) == frozen
        assert read_raw(raw_image, MiB, 4) == b"\0" * 4  # the new write is in the overlay

    after = snapshot_of(libvirt, dom)
    assert after == before
    assert after["state"] == libvirt.VIR_DOMAIN_RUNNING
    assert overlays_in(domain_factory.workdir) == []
    assert list_journals(state_dir) == []
    assert sha256(chain_base) == base_digest  # merged into the top image, not the base
    # The copy is byte-identical to the image at snapshot time ...
    assert sha256(backup) == frozen
    assert read_raw(backup, 0, 4) == b"\x11" * 4
    # ... and the write made during the backup reached the original image.
    assert read_raw(raw_image, MiB, MiB) == b"\x22" * MiB
    assert any("crash-consistent" in text for _, text in steps.warnings)
    # The lock is free again.
    assert domain_lock(state_dir, dom.UUIDString(), dom.name()).try_acquire()


def test_a_paused_domain_stays_paused(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    dom.suspend()
    before = snapshot_of(libvirt, dom)
    with stable_images(
        hypervisor,
        planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
        SourceContext(state_dir=state_dir),
    ) as window:
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert window.consistency == Consistency.CRASH
        assert len(overlays_in(domain_factory.workdir)) == 1
    assert snapshot_of(libvirt, dom) == before
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert overlays_in(domain_factory.workdir) == []


def test_an_error_inside_the_window_still_merges_back(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    before = snapshot_of(libvirt, dom)
    with pytest.raises(KeyboardInterrupt):
        with stable_images(
            hypervisor,
            planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
            SourceContext(state_dir=state_dir),
        ):
            raise KeyboardInterrupt
    assert snapshot_of(libvirt, dom) == before
    assert overlays_in(domain_factory.workdir) == []
    assert list_journals(state_dir) == []


def test_quiesce_required_without_agent_fails_before_any_change(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    before = snapshot_of(libvirt, dom)
    options = ConsistencyOptions(quiesce=Quiesce.REQUIRE)
    with pytest.raises(Exception, match="cannot freeze the filesystems"):
        with stable_images(
            hypervisor,
            planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
            SourceContext(options, state_dir=state_dir),
        ):
            pytest.fail("the window must not open")
    assert snapshot_of(libvirt, dom) == before
    assert overlays_in(domain_factory.workdir) == []
    assert list_journals(state_dir) == []


def test_a_second_run_on_the_same_domain_gets_lock_held(
    domain_factory: DomainFactory, hypervisor: Hypervisor, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    with stable_images(
        hypervisor,
        planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
        SourceContext(state_dir=state_dir),
    ):
        with pytest.raises(LockHeld) as caught:
            with stable_images(
                hypervisor,
                planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
                SourceContext(state_dir=state_dir),
            ):
                pytest.fail("two runs on one domain")
        assert caught.value.exit_code == 3
        assert dom.name() in str(caught.value)
        assert len(overlays_in(domain_factory.workdir)) == 1  # the first run is untouched
    assert overlays_in(domain_factory.workdir) == []


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    """A ~2 MiB ext4 filesystem on a loop device, mounted, removed after the test."""
    image = tmp_path / "tiny.ext4"
    mountpoint = Path(f"/var/lib/libvirt/images/vbtest-fullfs-{tmp_path.name}")
    with open(image, "wb") as f:
        f.truncate(2 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mountpoint.mkdir(mode=0o755)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        mountpoint.chmod(0o777)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-d", str(mountpoint)], check=False)
        shutil.rmtree(mountpoint, ignore_errors=True)


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\xff" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("min_free", [512 * MiB, 0], ids=["checked-first", "libvirt-fails"])
def test_a_full_overlay_directory_is_a_clear_error_and_changes_nothing(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    libvirt: Any,
    state_dir: Path,
    tiny_fs: Path,
    min_free: int,
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    fill(tiny_fs)
    before = snapshot_of(libvirt, dom)
    options = ConsistencyOptions(overlay_dir=tiny_fs, overlay_min_free=min_free)
    expected = OverlaySpaceError if min_free else SnapshotFailed
    with pytest.raises(expected) as caught:
        with stable_images(
            hypervisor,
            planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
            SourceContext(options, state_dir=state_dir),
        ):
            pytest.fail("the window must not open")
    message = str(caught.value)
    assert "\n" not in message and dom.name() in message
    if min_free:
        assert "free in" in message
    assert snapshot_of(libvirt, dom) == before
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert overlays_in(tiny_fs, domain_factory.workdir) == []
    assert list_journals(state_dir) == []


def test_block_device_disk_needs_an_overlay_directory(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    libvirt: Any,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    dom = domain_factory.create([DiskSpec("block")], start=True)
    before = snapshot_of(libvirt, dom)
    with pytest.raises(Exception, match="overlay directory"):
        with stable_images(
            hypervisor,
            planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
            SourceContext(state_dir=state_dir),
        ):
            pass
    options = ConsistencyOptions(overlay_dir=domain_factory.workdir, overlay_min_free=0)
    device = Path(before["live"][0][2])
    with stable_images(
        hypervisor,
        planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
        SourceContext(options, state_dir=state_dir),
    ) as window:
        assert window.images[0].path == device
        assert len(overlays_in(domain_factory.workdir)) == 1
    assert snapshot_of(libvirt, dom) == before
    assert overlays_in(domain_factory.workdir) == []


# -- shutdown and offline -------------------------------------------------------------------


def test_shutdown_timeout_aborts_and_leaves_the_domain_running(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)  # the BIOS ignores ACPI
    before = snapshot_of(libvirt, dom)
    options = ConsistencyOptions(shutdown_timeout=3)
    with pytest.raises(ShutdownTimeout, match="did not shut down within 3s"):
        with stable_images(
            hypervisor,
            planned(hypervisor, dom.name(), Method.SHUTDOWN, ["vda"]),
            SourceContext(options, state_dir=state_dir),
        ):
            pytest.fail("the window must not open")
    assert snapshot_of(libvirt, dom) == before
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert list_journals(state_dir) == []


def test_shutdown_force_off_backs_up_offline_and_restarts_even_on_failure(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    before = snapshot_of(libvirt, dom)
    options = ConsistencyOptions(shutdown_timeout=2, force_off=True)
    with pytest.raises(RuntimeError, match="the data path failed"):
        with stable_images(
            hypervisor,
            planned(hypervisor, dom.name(), Method.SHUTDOWN, ["vda"]),
            SourceContext(options, state_dir=state_dir),
        ) as window:
            assert window.consistency == Consistency.OFFLINE
            assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
            raise RuntimeError("the data path failed")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert snapshot_of(libvirt, dom)["live"] == before["live"]
    assert list_journals(state_dir) == []


def test_shutdown_refuses_paused_and_offline_reads_shut_off_domains(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    paused = domain_factory.create([DiskSpec("qcow2")], hint="paused", start=True)
    paused.suspend()
    refused = planned(hypervisor, paused.name(), Method.SHUTDOWN, ["vda"])
    assert refused.method is None and "paused" in refused.reason
    assert paused.state()[0] == libvirt.VIR_DOMAIN_PAUSED

    off = domain_factory.create([DiskSpec("qcow2")], hint="off")
    for method in (Method.SNAPSHOT, Method.SHUTDOWN, Method.OFFLINE):
        with stable_images(
            hypervisor,
            planned(hypervisor, off.name(), method, ["vda"]),
            SourceContext(state_dir=state_dir),
        ) as w:
            assert w.method == Method.OFFLINE and w.consistency == Consistency.OFFLINE
            assert w.images[0].path.exists()
        assert off.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def test_a_domain_no_longer_as_planned_is_left_alone(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")])
    plan = planned(hypervisor, dom.name(), Method.AUTO, ["vda"])
    assert plan.method == Method.OFFLINE
    dom.create()  # started between planning and the backup: no longer safe to read directly
    before = snapshot_of(libvirt, dom)
    with pytest.raises(DomainChanged, match="run the backup again|shut off"):
        with stable_images(hypervisor, plan, SourceContext(state_dir=state_dir)):
            pytest.fail("the window must not open")
    assert snapshot_of(libvirt, dom) == before
    assert list_journals(state_dir) == []

    dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    with pytest.raises(DomainChanged, match="no longer exists"):
        with stable_images(hypervisor, plan, SourceContext(state_dir=state_dir)):
            pytest.fail("the window must not open")


@pytest.mark.parametrize("method", [Method.SNAPSHOT, Method.SHUTDOWN])
def test_a_domain_shut_off_since_planning_is_read_offline(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    libvirt: Any,
    state_dir: Path,
    method: Method,
) -> None:
    # Common in a long nightly run: the guest shut itself down while earlier domains were
    # backed up. Nothing writes to its images, so they are read as they are.
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    plan = planned(hypervisor, dom.name(), method, ["vda"])
    assert plan.method == method
    dom.destroy()
    with stable_images(hypervisor, plan, SourceContext(state_dir=state_dir)) as window:
        assert window.method == Method.OFFLINE and window.consistency == Consistency.OFFLINE
        assert not overlays_in(window.images[0].path.parent)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF  # not started by the shutdown method
    assert list_journals(state_dir) == []
