"""engine/shrink/domains against the real appliance, real libvirt domains and virt-sparsify.

Each appliance launch costs 15-25 s under TCG, so the in-place checks share one build
(two disks in one launch), one shrink of a two-disk domain, one virt-sparsify run per
reference copy (in the background, meanwhile) and one verifying launch.
"""

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.guest import TinyGuestFactory
from harness.libvirtd import IMAGES_ROOT, DiskSpec, DomainFactory
from shrink_helpers import (
    GuestDisk,
    allocated,
    build_guest_disks,
    check_disks,
    sparse_copy,
)

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.adapters.locks import domain_lock
from virtbackup.core.errors import LockHeld
from virtbackup.core.progress import RecordingSteps
from virtbackup.core.shrink_plan import NotEnoughSpace, ShrinkOptions
from virtbackup.engine.shrink import domains as shrink_engine
from virtbackup.engine.shrink.copy_mode import PARTIAL_SUFFIX, CopyTarget, write_compact
from virtbackup.engine.shrink.domains import amend_compat, can_punch_holes, shrink_domains
from virtbackup.engine.shrink.guest_reclaim import Image

MiB = 1024 * 1024
URI = "qemu:///system"


class Recorder(RecordingSteps):
    """Keeps the stages of the shrink, and the steps and warnings of the methods."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: list[str] = []

    def begin(self, domain: str, total_stages: int) -> None:
        pass

    def stage(self, domain: str, text: str, total_stages: int | None = None) -> None:
        self.stages.append(text)

    def end(self, domain: str) -> None:
        pass


@pytest.fixture(scope="module")
def shrink_dir() -> Iterator[Path]:
    """Under the libvirt images root: qemu (as libvirt-qemu) may open what is here."""
    path = IMAGES_ROOT / f"vbtest-shrink-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def guest_disks(guestfs_module: Any, guestfs_works: None, shrink_dir: Path) -> list[GuestDisk]:
    return build_guest_disks(
        guestfs_module,
        [(shrink_dir / "a.raw", "raw", "vga"), (shrink_dir / "b.qcow2", "qcow2", "vgb")],
    )


def shrink(name: str, options: ShrinkOptions, state_dir: Path) -> tuple[Any, Recorder]:
    progress = Recorder()
    with connect(URI) as conn:
        (outcome,) = shrink_domains(conn, [name], options, progress, state_dir=state_dir)
    return outcome, progress


@pytest.mark.guestfs
@pytest.mark.libvirt
def test_in_place_matches_virt_sparsify_and_keeps_every_file(
    guest_disks: list[GuestDisk],
    domain_factory: DomainFactory,
    guestfs_module: Any,
    shrink_dir: Path,
    tmp_path: Path,
) -> None:
    raw, qcow2 = guest_disks
    # The references: identical copies, each sparsified by virt-sparsify meanwhile.
    references = [
        sparse_copy(raw.path, shrink_dir / "ref-a.raw"),
        sparse_copy(qcow2.path, shrink_dir / "ref-b.qcow2"),
    ]
    for reference, disk in zip(references, (raw, qcow2), strict=True):
        # Not to the byte: fallocated-but-unwritten ranges of the original read as holes.
        assert allocated(reference) == pytest.approx(allocated(disk.path), rel=0.01)
    sparsify = [
        subprocess.Popen(
            ["virt-sparsify", "--in-place", "-q", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for path in references
    ]
    dom = domain_factory.create(
        [DiskSpec("raw", image=raw.path), DiskSpec("qcow2", image=qcow2.path)], hint="inplace"
    )

    outcome, progress = shrink(dom.name(), ShrinkOptions(), tmp_path)

    assert outcome.ok, outcome.error
    for proc in sparsify:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    by_target = {disk.target: disk for disk in outcome.disks}
    for target, disk, reference in (("vda", raw, references[0]), ("vdb", qcow2, references[1])):
        result = by_target[target]
        assert result.path == str(disk.path)
        assert result.after == allocated(disk.path)
        assert result.before is not None and result.after is not None
        assert result.after < result.before / 3, result
        # "Same resulting size as virt-sparsify --in-place": within 10 %.
        assert result.after <= allocated(reference) * 1.10, (result, allocated(reference))
    assert progress.stages[0] == "launching the appliance"
    for expected in (
        "trimming vda1 (ext4)",
        "discarding swap vda2",
        "trimming vdb1 (ext4)",
        "trimming /dev/vga/data (xfs)",
        "discarding swap /dev/vgb/swap",
        "reclaiming free space of volume group vga",
        "reclaiming free space of volume group vgb",
    ):
        assert expected in progress.stages
    assert "/dev/vga/ro: read-only LV, left alone" in outcome.notes

    checks = check_disks(guestfs_module, [raw, qcow2], tmp_path)
    for disk, check in zip((raw, qcow2), checks, strict=True):
        assert check.fsck == {"ext4": 0, "xfs": 0}, check.output
        assert check.ext4_files == disk.ext4_files
        assert check.xfs_files == disk.xfs_files
        assert check.swap == (disk.swap_uuid, disk.swap_label)
        assert check.lv_swap == (disk.lv_swap_uuid, disk.lv_swap_label)
        assert check.ro_sha256 == disk.ro_sha256


# -- refusals: no appliance is launched --------------------------------------------------


@pytest.mark.libvirt
def test_running_and_paused_domains_are_refused(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    running = domain_factory.create([DiskSpec("qcow2")], hint="run", start=True)
    paused = domain_factory.create([DiskSpec("raw")], hint="pause", start=True)
    paused.suspend()
    progress = Recorder()
    with connect(URI) as conn:
        outcomes = shrink_domains(
            conn, [running.name(), paused.name()], ShrinkOptions(), progress, state_dir=tmp_path
        )
    assert [o.ok for o in outcomes] == [False, False]
    assert outcomes[0].error is not None
    assert "running: shut it down first, or pass --shutdown" in outcomes[0].error
    assert outcomes[1].error is not None and "paused" in outcomes[1].error
    with connect(URI) as conn:  # --shutdown does not apply to a paused guest
        (again,) = shrink_domains(
            conn, [paused.name()], ShrinkOptions(shutdown=True), progress, state_dir=tmp_path
        )
    assert again.error is not None and "paused" in again.error
    assert progress.stages == []
    assert running.isActive() and paused.info()[0] == 3  # VIR_DOMAIN_PAUSED: untouched


@pytest.mark.libvirt
def test_lock_held_by_another_run(domain_factory: DomainFactory, tmp_path: Path) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], hint="locked")
    lock = domain_lock(tmp_path, dom.UUIDString(), dom.name())
    lock.acquire()
    try:
        with pytest.raises(LockHeld):
            shrink(dom.name(), ShrinkOptions(), tmp_path)
    finally:
        lock.release()


@pytest.mark.libvirt
def test_qcow2_compat_0_10_overlay_is_refused_with_the_fix(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    base = domain_factory.blank_image("base.raw", "raw", 16 * MiB)
    image = domain_factory.workdir / "old.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10"]
        + ["-b", str(base), "-F", "raw", str(image)],
        check=True,
    )
    dom = domain_factory.create([DiskSpec("qcow2", image=image)], hint="compat")
    outcome, progress = shrink(dom.name(), ShrinkOptions(), tmp_path)
    assert outcome.error is not None
    assert "compat=0.10 overlay" in outcome.error and "qemu-img amend" in outcome.error
    assert "--amend-compat" in outcome.error and "--to DIR" in outcome.error
    assert progress.stages == []
    # What --amend-compat does before the appliance starts.
    notes = amend_compat([Image("vda", str(image), "qcow2")])
    assert notes == ["vda: qcow2 compat upgraded from 0.10 to 1.1"]
    assert shrink_engine.qcow2_compat(str(image)) == ("1.1", True)
    # A version 2 image without a backing file frees what it discards: accepted.
    plain = domain_factory.workdir / "plain.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(plain), "16M"],
        check=True,
    )
    assert shrink_engine.check_in_place([Image("vda", str(plain), "qcow2")], ShrinkOptions()) == []


@pytest.mark.libvirt
def test_image_on_a_filesystem_without_hole_punching_is_refused(
    domain_factory: DomainFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert can_punch_holes(tmp_path)  # ext4 or tmpfs here
    dom = domain_factory.create([DiskSpec("raw")], hint="nopunch")
    monkeypatch.setattr(shrink_engine, "can_punch_holes", lambda directory: False)
    outcome, progress = shrink(dom.name(), ShrinkOptions(), tmp_path)
    assert outcome.error is not None and "cannot punch holes" in outcome.error
    assert "copy mode" in outcome.error
    assert progress.stages == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.libvirt
def test_copy_mode_checks_free_space_first(
    domain_factory: DomainFactory, tmp_path: Path, small_tmpfs: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2", size=64 * MiB)], hint="nospace")
    out = tmp_path / "out"
    out.mkdir()
    options = ShrinkOptions(to_dir=out, tmp_dir=small_tmpfs)
    with connect(URI) as conn:
        (facts,) = conn.discover([dom.name()])
        with pytest.raises(NotEnoughSpace, match=r"not enough free space in .*small.*--tmp DIR"):
            shrink_engine.shrink_domain(conn, facts, options, Recorder(), state_dir=tmp_path)
    assert list(out.iterdir()) == []
    assert list(small_tmpfs.iterdir()) == []


@pytest.mark.guestfs
@pytest.mark.guest
@pytest.mark.libvirt
def test_shutdown_then_a_compact_copy_replaces_the_image_and_the_guest_runs_again(
    tiny_guest: TinyGuestFactory, guestfs_works: None, tmp_path: Path
) -> None:
    """--shutdown with --convert qcow2 and no --to: the copy is renamed over the image."""
    guest = tiny_guest("qcow2", discard=False, hint="shut")
    # Written and deleted inside the guest; without discard its blocks stay allocated.
    code, out = guest.exec(
        "dd if=/dev/urandom of=/mnt/data/junk bs=1M count=24 2>&1 && sync && "
        "rm /mnt/data/junk && echo kept > /mnt/data/kept && sync"
    )
    assert code == 0, out
    inode = os.stat(guest.disk).st_ino
    options = ShrinkOptions(shutdown=True, shutdown_timeout=120, convert="qcow2", tmp_dir=tmp_path)
    outcome, progress = shrink(guest.dom.name(), options, tmp_path / "state")
    assert outcome.ok, outcome.error
    steps = [text for _, text in progress.steps]
    assert "shutting down (ACPI power button)" in steps
    assert "start the domain again" in steps
    (disk,) = outcome.disks
    assert disk.output == str(guest.disk) == disk.path  # same name, same format: replaced
    assert os.stat(guest.disk).st_ino != inode  # a new file, renamed into place
    assert [p.name for p in guest.disk.parent.iterdir() if "virtbackup" in p.name] == []
    assert disk.before is not None and disk.after is not None
    assert disk.after < disk.before - 16 * MiB, disk
    assert guest.dom.isActive()  # started again, like the shutdown backup method
    guest.wait_agent()
    assert guest.exec("cat /mnt/data/kept") == (0, "kept\n")


def test_a_compact_copy_never_writes_through_a_link_at_its_temporary_name(
    tmp_path: Path,
) -> None:
    image = tmp_path / "web.raw"
    image.write_bytes(b"\x07" * (1024 * 1024))
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(overlay)],
        check=True,
    )
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"precious\n")
    output = tmp_path / "web-small.raw"
    (tmp_path / f".web-small.raw{PARTIAL_SUFFIX}").symlink_to(decoy)
    write_compact(overlay, CopyTarget(Image("vda", str(image), "raw"), output, "raw", False), False)
    assert decoy.read_bytes() == b"precious\n"
    assert output.read_bytes() == image.read_bytes()
    assert not os.path.lexists(tmp_path / f".web-small.raw{PARTIAL_SUFFIX}")
