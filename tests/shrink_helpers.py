"""Guest disks for the shrink tests: partitions, ext4, swap, LVM with xfs, and garbage.

A disk (default 160 MiB virtual, sparse) holds, as a long-lived guest disk does:
- /dev/sda1 ext4 (40 MiB): host files, and random data written then deleted;
- /dev/sda2 swap (16 MiB) with a label and UUID, full of old random pages;
- /dev/sda3 an LVM PV of volume group `vg`, holding
  - `data`: xfs (48 MiB) with host files and deleted random data,
  - `ro`: a read-only LV with random content (shrink must leave it alone),
  - `swap`: a swap LV with a label and UUID and old random pages,
  - free extents that once held random data (a removed LV).
Filesystems are made on the host (mkfs, loop mounts); partitions are laid out with
sfdisk; the appliance only does the LVM part (the host kernel has no device-mapper).
"""

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.images import build_fs_image

MiB = 1024 * 1024
SECTOR = 512
EXT4_START, EXT4_SIZE = 1 * MiB, 40 * MiB
SWAP_START, SWAP_SIZE = EXT4_START + EXT4_SIZE, 16 * MiB
PV_START = SWAP_START + SWAP_SIZE
XFS_SIZE = 48 * MiB
# mkfs.xfs refuses filesystems under 300 MB unless it believes it runs in a test setup.
XFS_TEST_ENV = {"TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}


@dataclass
class GuestDisk:
    path: Path
    format: str
    vg: str
    ext4_files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    xfs_files: dict[str, str] = field(default_factory=dict)
    swap_uuid: str = ""
    swap_label: str = ""
    lv_swap_uuid: str = ""
    lv_swap_label: str = ""
    ro_sha256: str = ""


@contextmanager
def _env(extra: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _write_at(target: Path, source: Path, offset: int) -> None:
    """Copy `source` into `target` at `offset`, leaving holes where `source` has zeros."""
    block = 64 * 1024
    zero = bytes(block)
    with open(source, "rb") as src, open(target, "r+b") as dst:
        position = offset
        while chunk := src.read(block):
            if chunk != zero[: len(chunk)]:
                dst.seek(position)
                dst.write(chunk)
            position += len(chunk)


def _random_at(target: Path, offset: int, size: int) -> None:
    with open(target, "r+b") as dst:
        dst.seek(offset)
        dst.write(os.urandom(size))


def _swap_header(label: str, swap_uuid: str, size: int, scratch: Path) -> bytes:
    path = scratch / "swap.img"
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["mkswap", "-L", label, "-U", swap_uuid, str(path)], check=True, capture_output=True
    )
    header = path.read_bytes()[:4096]
    path.unlink()
    return header


def build_guest_disks(
    guestfs: Any, specs: list[tuple[Path, str, str]], *, size: int = 160 * MiB
) -> list[GuestDisk]:
    """Build a disk as described in the module doc for each (path, format, vg), with
    one appliance launch for all of them (raw or qcow2; vg names must differ)."""
    scratch = specs[0][0].parent / ".build-shrink"
    scratch.mkdir()
    disks: list[GuestDisk] = []
    raws: list[Path] = []
    xfs_images: list[Path] = []
    try:
        garbage = scratch / "garbage"
        garbage.write_bytes(os.urandom(24 * MiB))
        for index, (path, fmt, vg) in enumerate(specs):
            work = scratch / str(index)
            work.mkdir()
            raw = path if fmt == "raw" else work / "disk.raw"
            disk, xfs = _host_part(raw, path, fmt, vg, size, work)
            disks.append(disk)
            raws.append(raw)
            xfs_images.append(xfs)
        g = guestfs.GuestFS(python_return_dict=True)
        try:
            for raw in raws:
                g.add_drive_opts(str(raw), format="raw", readonly=False)
            g.launch()
            for index, (disk, xfs) in enumerate(zip(disks, xfs_images, strict=True)):
                _lvm_part(g, f"/dev/sd{chr(ord('a') + index)}3", disk, xfs, garbage)
            g.sync()
            g.shutdown()
        finally:
            g.close()
        for disk, raw in zip(disks, raws, strict=True):
            if disk.format != "raw":
                subprocess.run(
                    [
                        "qemu-img",
                        "convert",
                        "-f",
                        "raw",
                        "-O",
                        disk.format,
                        str(raw),
                        str(disk.path),
                    ],
                    check=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return disks


def _host_part(
    raw: Path, path: Path, fmt: str, vg: str, size: int, work: Path
) -> tuple[GuestDisk, Path]:
    """Partitions, ext4 and swap written on the host; the xfs image for the LV."""
    disk = GuestDisk(path=path, format=fmt, vg=vg)
    with open(raw, "wb") as f:
        f.truncate(size)
    layout = (
        "label: dos\n"
        f"start={EXT4_START // SECTOR}, size={EXT4_SIZE // SECTOR}, type=83\n"
        f"start={SWAP_START // SECTOR}, size={SWAP_SIZE // SECTOR}, type=82\n"
        f"start={PV_START // SECTOR}, type=8e\n"
    )
    subprocess.run(["sfdisk", "-q", str(raw)], input=layout.encode(), check=True)

    ext4 = build_fs_image(
        work / "ext4.img", size=EXT4_SIZE, fs="ext4", content=6 * MiB, deleted=16 * MiB
    )
    disk.ext4_files = ext4.files
    _write_at(raw, ext4.path, EXT4_START)

    disk.swap_label, disk.swap_uuid = f"sw-{vg}", str(uuid.uuid4())
    _random_at(raw, SWAP_START, SWAP_SIZE)  # pages the guest swapped out once
    header = _swap_header(disk.swap_label, disk.swap_uuid, SWAP_SIZE, work)
    with open(raw, "r+b") as f:
        f.seek(SWAP_START)
        f.write(header)

    with _env(XFS_TEST_ENV):
        xfs = build_fs_image(
            work / "xfs.img", size=XFS_SIZE, fs="xfs", content=6 * MiB, deleted=16 * MiB
        )
    disk.xfs_files = xfs.files
    disk.lv_swap_label, disk.lv_swap_uuid = f"lvsw-{vg}", str(uuid.uuid4())
    return disk, xfs.path


def _lvm_part(g: Any, pv: str, disk: GuestDisk, xfs: Path, garbage: Path) -> None:
    vg = disk.vg
    g.pvcreate(pv)
    g.vgcreate(vg, [pv])
    g.lvcreate("data", vg, XFS_SIZE // MiB)
    g.upload(str(xfs), f"/dev/{vg}/data")
    g.lvcreate("ro", vg, 4)
    g.pwrite_device(f"/dev/{vg}/ro", os.urandom(1 * MiB), 0)
    g.debug("sh", [f"lvm lvchange --permission r {vg}/ro"])
    g.lvcreate("swap", vg, 8)
    g.mkswap(f"/dev/{vg}/swap", label=disk.lv_swap_label, uuid=disk.lv_swap_uuid)
    g.pwrite_device(f"/dev/{vg}/swap", os.urandom(2 * MiB), 4096)
    # Data in the free extents: an LV that held it and was removed.
    g.lvcreate_free("junk", vg, 100)
    g.upload(str(garbage), f"/dev/{vg}/junk")
    g.lvremove(f"/dev/{vg}/junk")
    disk.ro_sha256 = g.checksum_device("sha256", f"/dev/{vg}/ro")


def sparse_copy(source: Path, target: Path) -> Path:
    """An identical copy, allocated where the source is: its data extents are copied as
    they are, zeros included (cp would punch holes for zero blocks, and the copy would
    start smaller than the original)."""
    chunk = 4 * MiB
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        dst.truncate(size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            src.seek(start)
            dst.seek(start)
            while start < end:
                data = src.read(min(chunk, end - start))
                dst.write(data)
                start += len(data)
            offset = end
    return target


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@dataclass
class DiskCheck:
    """What the verifying appliance found on one disk."""

    fsck: dict[str, int] = field(default_factory=dict)  # fs -> exit status
    ext4_files: dict[str, str] = field(default_factory=dict)
    xfs_files: dict[str, str] = field(default_factory=dict)
    swap: tuple[str, str] = ("", "")  # uuid, label
    lv_swap: tuple[str, str] = ("", "")
    ro_sha256: str = ""
    output: str = ""


def _sums(g: Any, directory: str, scratch: Path) -> dict[str, str]:
    out = scratch / "sums"
    g.checksums_out("sha256", directory, str(out))
    sums = {}
    for line in out.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums["files/" + name.removeprefix("./")] = digest
    return sums


def _e2fsck(g: Any, device: str) -> tuple[int, str]:
    """e2fsck -fn's exit status and what it said; an operational error (8: it could not
    check, not a verdict on the filesystem, seen once on a loaded host) is tried again."""
    for _attempt in range(3):
        said = g.debug("sh", [f"e2fsck -fn {device} 2>&1; echo $?"])
        *lines, code = said.strip().splitlines()
        if int(code) != 8:
            break
    return int(code), "\n".join(lines) + "\n"


def check_disks(guestfs: Any, disks: list[GuestDisk], scratch: Path) -> list[DiskCheck]:
    """Open the disks read-only in one appliance: fsck, checksums, swap headers."""
    g = guestfs.GuestFS(python_return_dict=True)
    checks = []
    try:
        for disk in disks:
            g.add_drive_opts(str(disk.path), format=disk.format, readonly=True)
        g.launch()
        for index, disk in enumerate(disks):
            dev = f"/dev/sd{chr(ord('a') + index)}"
            check = DiskCheck()
            check.fsck["ext4"], ext4_said = _e2fsck(g, f"{dev}1")
            g.mount_ro(f"{dev}1", "/")
            check.ext4_files = _sums(g, "/files", scratch)
            g.umount_all()
            lv = f"/dev/{disk.vg}/data"
            # The appliance has no xfs_repair (Debian ships it in libguestfs-xfs): the
            # host's checks a copy of the LV.
            copy = scratch / f"{disk.vg}-data.xfs"
            g.download(lv, str(copy))
            repair = subprocess.run(
                ["xfs_repair", "-n", "-f", str(copy)], check=False, capture_output=True, text=True
            )
            check.fsck["xfs"] = repair.returncode
            check.output = ext4_said + repair.stdout + repair.stderr
            copy.unlink()
            g.mount_ro(lv, "/")
            check.xfs_files = _sums(g, "/files", scratch)
            g.umount_all()
            check.swap = (g.vfs_uuid(f"{dev}2"), g.vfs_label(f"{dev}2"))
            swap_lv = f"/dev/{disk.vg}/swap"
            check.lv_swap = (g.vfs_uuid(swap_lv), g.vfs_label(swap_lv))
            check.ro_sha256 = g.checksum_device("sha256", f"/dev/{disk.vg}/ro")
            checks.append(check)
    finally:
        g.close()
    return checks
