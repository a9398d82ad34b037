"""`backup --skip-free` against real libvirt domains and the real appliance.

Each domain holds a raw and a qcow2 ext4 image with host files and deleted random data.
The --skip-free backup must leave the garbage out, restore to filesystems that check
clean and hold the same files, and never change the live images. One appliance launch
per domain: an offline one, and a running one read through the snapshot method.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.cli import virtbackup, virtbackup_in
from harness.guestfs import HANG, fake_qemu, processes_running
from harness.images import BuiltImage, allocated_bytes, build_fs_image, read_file_from_ext4
from harness.libvirtd import IMAGES_ROOT, DiskSpec, DomainFactory

from virtbackup.adapters.workdirs import PREFIX as TMP_PREFIX
from virtbackup.adapters.workdirs import remove_leftovers
from virtbackup.core.manifest import parse_manifest
from virtbackup.engine.datapath.disk_backup import DiskSource
from virtbackup.engine.datapath.nbd_source import NbdLocation
from virtbackup.engine.methods.skip_free import eligibility

MiB = 1024 * 1024
GARBAGE = 24 * MiB  # random, so it does not compress away in the plain backup


@dataclass
class Scenario:
    domain: str
    images: list[BuiltImage]
    before: dict[Path, str]  # live image -> sha256 before the backups
    plain: dict[str, Any]  # summary row of the plain backup
    skipped: dict[str, Any]  # summary row of the --skip-free backup
    restored: Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def backup_row(state_dir: Path, *args: str) -> dict[str, Any]:
    result = virtbackup_in(state_dir, "backup", *args, "--json", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return dict(row)


@pytest.fixture(scope="module")
def factory(libvirt_conn: Any, libvirt: Any) -> Iterator[DomainFactory]:
    made = DomainFactory(libvirt_conn, libvirt)
    yield made
    made.cleanup()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = IMAGES_ROOT / f"vbtest-skipfree-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_scenario(
    factory: DomainFactory, work: Path, guestfs_works: None, hint: str, *, start: bool
) -> Scenario:
    raw = build_fs_image(factory.workdir / f"{hint}-a.raw", deleted=GARBAGE)
    qcow2 = build_fs_image(factory.workdir / f"{hint}-b.qcow2", fmt="qcow2", deleted=GARBAGE)
    dom = factory.create(
        [DiskSpec("raw", image=raw.path), DiskSpec("qcow2", image=qcow2.path)],
        hint=hint,
        start=start,
    )
    before = {image.path: sha256(image.path) for image in (raw, qcow2)}
    state = work / f"{hint}-state"
    dest = work / f"{hint}-dest"
    dest.mkdir()
    # Streams: each backup's stored size is all of its disks (in the repository the
    # second would reuse the chunks of the first).
    args = (dom.name(), "--dest", str(dest), "--layout", "stream")
    plain = backup_row(state, *args)
    skipped = backup_row(state, *args, "--skip-free")
    if start:
        assert dom.isActive()
    else:
        assert {image.path: sha256(image.path) for image in (raw, qcow2)} == before
    restored = work / f"{hint}-restored"
    result = virtbackup_in(state, "restore", skipped["backup"], "--to", str(restored))
    assert result.returncode == 0, result.stdout + result.stderr
    if start:
        # Gone back to its own images; those are unchanged only once it stops writing.
        dom.destroy()
    return Scenario(dom.name(), [raw, qcow2], before, plain, skipped, restored)


@pytest.fixture(scope="module")
def offline(factory: DomainFactory, work: Path, guestfs_works: None) -> Scenario:
    return run_scenario(factory, work, guestfs_works, "off", start=False)


@pytest.fixture(scope="module")
def running(factory: DomainFactory, work: Path, guestfs_works: None) -> Scenario:
    return run_scenario(factory, work, guestfs_works, "run", start=True)


@pytest.fixture(params=["offline", "running"])
def scenario(request: pytest.FixtureRequest) -> Scenario:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.mark.libvirt
@pytest.mark.guestfs
def test_garbage_is_left_out(scenario: Scenario) -> None:
    assert scenario.skipped["method"] in ("offline", "snapshot")
    assert not scenario.skipped["warnings"]
    # The plain backup carries both disks' random garbage; --skip-free none of it.
    saved = scenario.plain["stored"] - scenario.skipped["stored"]
    assert saved > 2 * GARBAGE * 0.8, (scenario.plain["stored"], scenario.skipped["stored"])


@pytest.mark.libvirt
@pytest.mark.guestfs
def test_manifest_marks_the_disks(scenario: Scenario) -> None:
    manifest = parse_manifest((Path(scenario.skipped["backup"]) / "manifest.json").read_text())
    assert [d.free_space_skipped for d in manifest.disks] == [True, True]
    assert [d.source for d in manifest.disks] == [str(i.path) for i in scenario.images]
    assert [d.file for d in manifest.disks] == ["vda.raw.lz4", "vdb.qcow2.lz4"]
    assert not list(Path(scenario.skipped["backup"]).parent.parent.glob(".virtbackup-skip-*"))


@pytest.mark.libvirt
@pytest.mark.guestfs
def test_live_images_are_unchanged(offline: Scenario) -> None:
    assert {image.path: sha256(image.path) for image in offline.images} == offline.before


@pytest.mark.libvirt
@pytest.mark.guestfs
def test_restore_checks_clean_with_identical_files(scenario: Scenario, tmp_path: Path) -> None:
    raw = scenario.restored / "vda.raw"
    as_raw = tmp_path / "vdb.raw"
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            str(scenario.restored / "vdb.qcow2"),
            str(as_raw),
        ],
        check=True,
    )
    # The garbage became holes: the restored raw holds the files, not the deleted data.
    assert allocated_bytes(raw) < allocated_bytes(scenario.images[0].path) - GARBAGE * 0.8
    for image, restored in zip(scenario.images, (raw, as_raw), strict=True):
        fsck = subprocess.run(
            ["e2fsck", "-fn", str(restored)], check=False, capture_output=True, text=True
        )
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        for name, digest in image.files.items():
            assert hashlib.sha256(read_file_from_ext4(restored, name)).hexdigest() == digest, name


@pytest.mark.libvirt
def test_block_device_falls_back_with_a_warning(factory: DomainFactory, work: Path) -> None:
    dom = factory.create([DiskSpec("block", size=8 * MiB)], hint="blk")
    dest = work / "blk-dest"
    dest.mkdir()
    row = backup_row(work / "blk-state", dom.name(), "--dest", str(dest), "--skip-free")
    assert any("block device" in w and "backed up in full" in w for w in row["warnings"])
    manifest = parse_manifest((Path(row["backup"]) / "manifest.json").read_text())
    assert not manifest.disks[0].free_space_skipped


@pytest.mark.libvirt
@pytest.mark.guestfs
def test_hanging_appliance_falls_back_to_a_full_backup(
    factory: DomainFactory, work: Path, guestfs_works: None, tmp_path: Path
) -> None:
    dom = factory.create([DiskSpec("raw", size=8 * MiB)], hint="hang")
    dest = work / "hang-dest"
    dest.mkdir()
    config = tmp_path / "virtbackup.toml"
    config.write_text("appliance_timeout = 10\n")
    qemu = fake_qemu(tmp_path, HANG)
    result = virtbackup(
        "--config",
        str(config),
        "backup",
        dom.name(),
        "--dest",
        str(dest),
        "--skip-free",
        "--json",
        state_dir=work / "hang-state",
        env={"LIBGUESTFS_HV": str(qemu)},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert any(
        "did not start within 10 s" in w and "backed up in full" in w for w in row["warnings"]
    ), row
    manifest = parse_manifest((Path(row["backup"]) / "manifest.json").read_text())
    assert not manifest.disks[0].free_space_skipped
    assert processes_running(qemu) == []
    assert [p.name for p in dest.iterdir() if p.name.startswith(TMP_PREFIX)] == []


@pytest.mark.parametrize(
    ("fmt", "chain", "reason"),
    [
        ("raw", (), None),
        ("qcow2", (), None),
        ("qcow2", ("/base.raw",), "has a backing file"),
        ("vmdk", (), "format vmdk is not supported"),
    ],
)
def test_eligibility(tmp_path: Path, fmt: str, chain: tuple[str, ...], reason: str | None) -> None:
    image = tmp_path / "disk"
    image.write_bytes(b"")
    found = eligibility(DiskSource("vda", image, fmt, 0, chain))
    assert (found is None) if reason is None else (found is not None and reason in found)
    assert "block device" in (eligibility(DiskSource("vda", Path("/dev/null"), "raw", 0, ())) or "")
    served = DiskSource("vda", image, "raw", 0, nbd=NbdLocation(tmp_path / "s.sock", "vda"))
    assert eligibility(served) == "read over NBD from the backup job"


def test_leftovers_of_killed_runs_are_removed(tmp_path: Path) -> None:
    old, fresh, held = (tmp_path / f"{TMP_PREFIX}{n}" for n in ("old", "fresh", "held"))
    other = tmp_path / "keep"
    for path in (old, fresh, held, other):
        path.mkdir()
        (path / "vda.raw").write_bytes(b"x")
    for path in (old, held, other):
        os.utime(path, (1000, 1000))
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_leftovers(tmp_path) == [old]
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (fresh, held, other)
    )
