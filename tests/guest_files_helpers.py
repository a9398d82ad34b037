"""A small guest disk with known files for `files`, `mount` and `export --nbd`.

The raw disk (96 MiB, sparse) holds:
- partition 1: ext4 (24 MiB) with /etc/hostname, /home/alice (files of another owner,
  modes and times of their own, a link pointing out of the tree) and /big.bin (9 MiB of
  random data, so that some 4 MiB chunk holds nothing else);
- partition 2: an LVM PV of volume group `vgfe` holding LV `data`: xfs with /srv/www.
Everything is made on the host: the filesystems through loop mounts, the volume group
with LVM's tools on a loop device of the partition (metadata only: the host kernel has
no device-mapper, so the LV is never activated; the xfs image is written where its
extents lie). No appliance launch is needed.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shrink_helpers import XFS_TEST_ENV

MiB = 1024 * 1024
SECTOR = 512
EXT4_START, EXT4_SIZE = 1 * MiB, 24 * MiB
PV_START = EXT4_START + EXT4_SIZE
DISK_SIZE = 96 * MiB
XFS_SIZE = 48 * MiB
VG = f"vgfe{uuid.uuid4().hex[:6]}"  # one name a run: the host's LVM sees it for a moment
OLD = 1_000_000_000  # 2001-09-09, far from any time a test runs at


@dataclass(frozen=True)
class Known:
    """What the guest's filesystem says of one path."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    sha256: str | None = None  # of a regular file
    link: str | None = None


@dataclass
class GuestImage:
    path: Path
    files: dict[str, Known] = field(default_factory=dict)  # "/vda1/etc/hostname" -> Known
    big: bytes = b""  # the content of /vda1/big.bin


def build_guest_image(path: Path) -> GuestImage:
    image = GuestImage(path)
    with open(path, "wb") as f:
        f.truncate(DISK_SIZE)
    layout = (
        "label: dos\n"
        f"start={EXT4_START // SECTOR}, size={EXT4_SIZE // SECTOR}, type=83\n"
        f"start={PV_START // SECTOR}, type=8e\n"
    )
    subprocess.run(["sfdisk", "-q", str(path)], input=layout.encode(), check=True)
    with tempfile.TemporaryDirectory(prefix="vbtest-files-", dir=path.parent) as scratch:
        ext4 = Path(scratch) / "ext4.img"
        _make_fs(ext4, EXT4_SIZE, ["mkfs.ext4", "-q", "-F"], {})
        with _mounted(ext4) as root:
            _ext4_content(root, image)
            _record(root, "/vda1", image)
        subprocess.run(
            ["dd", f"if={ext4}", f"of={path}", "bs=1M", f"seek={EXT4_START // MiB}"]
            + ["conv=notrunc,sparse", "status=none"],
            check=True,
        )
        xfs = Path(scratch) / "xfs.img"
        _make_fs(xfs, XFS_SIZE, ["mkfs.xfs", "-q", "-f"], XFS_TEST_ENV)
        with _mounted(xfs) as root:
            _write(root / "srv/www/index.html", b"<h1>files</h1>\n", 0o600, 33, 33)
            _record(root, f"/{VG}-data", image)
        _lvm_with(path, xfs)
    return image


def _lvm_with(path: Path, xfs: Path) -> None:
    """Volume group VG on partition 2 of `path`, LV `data` holding the image `xfs`."""
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--offset", str(PV_START), str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # never look at (or touch) another device of the host, nor the kernel's device-mapper
    only = ["--devices", loop, "--config", "global { activation = 0 }"]

    def lvm(*args: str) -> str:
        done = subprocess.run(
            [args[0], *only, *args[1:]], check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    try:
        lvm("pvcreate", "-q", loop)
        lvm("vgcreate", "-q", VG, loop)
        lvm("lvcreate", "-q", "-an", "-Zn", "-L", f"{XFS_SIZE // MiB}M", "-n", "data", VG)
        pe_start = int(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start"))
        extent = int(
            lvm("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_extent_size")
        )
        ranges = lvm("lvs", "--noheadings", "-o", "seg_pe_ranges", f"{VG}/data")
        first_pe = int(ranges.rpartition(":")[2].partition("-")[0])
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True)
    offset = PV_START + pe_start + first_pe * extent
    with open(xfs, "rb") as source, open(path, "r+b") as target:
        target.seek(offset)
        shutil.copyfileobj(source, target)


def _make_fs(path: Path, size: int, mkfs: list[str], env: dict[str, str]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run([*mkfs, str(path)], check=True, env={**os.environ, **env})


class _mounted:
    def __init__(self, image: Path) -> None:
        self.image = image
        self.root = Path(tempfile.mkdtemp(prefix="vbtest-files-mnt-"))

    def __enter__(self) -> Path:
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.root)], check=True)
        return self.root

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.root)], check=True)
        self.root.rmdir()


def _write(path: Path, data: bytes, mode: int, uid: int, gid: int, mtime: int = OLD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def _ext4_content(root: Path, image: GuestImage) -> None:
    _write(root / "etc/hostname", b"files-guest\n", 0o644, 0, 0)
    alice = root / "home/alice"
    _write(alice / "notes.txt", os.urandom(5000).hex().encode(), 0o640, 1001, 1002)
    _write(alice / "bin/run.sh", b"#!/bin/sh\necho hi\n", 0o4755, 1001, 1002, OLD + 60)
    os.symlink("/etc/passwd", alice / "passwd-link")  # points out of any copy
    os.lchown(alice / "passwd-link", 1001, 1002)
    os.utime(alice / "passwd-link", (OLD, OLD), follow_symlinks=False)
    os.chown(alice, 1001, 1002)
    os.chmod(alice, 0o750)
    image.big = os.urandom(9 * MiB)
    _write(root / "big.bin", image.big, 0o600, 0, 0)
    for directory in (alice / "bin", alice):  # last: writing inside changed their times
        os.utime(directory, (OLD + 120, OLD + 120))


def _record(root: Path, prefix: str, image: GuestImage) -> None:
    """What the filesystem under `root` holds, by guest path under `prefix`."""
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            if path.relative_to(root).parts[0] == "lost+found":
                continue
            info = path.lstat()
            link = os.readlink(path) if path.is_symlink() else None
            digest = None
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            known = Known(info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns, digest, link)
            image.files[f"{prefix}/{path.relative_to(root)}"] = known
