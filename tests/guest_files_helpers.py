"""A small guest disk with known files for `files`, `mount` and `export --nbd`.

The raw disk (96 MiB, sparse) holds:
- partition 1: ext4 (24 MiB) with /etc/hostname, /home/alice (files of another owner,
  modes and times of their own, a link pointing out of the tree) and /big.bin (9 MiB of
  random data, so that some 4 MiB chunk holds nothing else);
- partition 2: an LVM PV of volume group `vgfe` holding LV `data`: xfs with /srv/www.
The filesystems are made on the host (loop mounts); the appliance only does the LVM part
(the host kernel has no device-mapper).
"""

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shrink_helpers import XFS_TEST_ENV

MiB = 1024 * 1024
SECTOR = 512
EXT4_START, EXT4_SIZE = 1 * MiB, 24 * MiB
PV_START = EXT4_START + EXT4_SIZE
DISK_SIZE = 96 * MiB
XFS_SIZE = 48 * MiB
VG = "vgfe"
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


def build_guest_image(path: Path, guestfs: Any) -> GuestImage:
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
        g = guestfs.GuestFS(python_return_dict=True)
        try:
            g.add_drive_opts(str(path), format="raw", readonly=False)
            g.launch()
            g.pvcreate("/dev/sda2")
            g.vgcreate(VG, ["/dev/sda2"])
            g.lvcreate("data", VG, XFS_SIZE // MiB)
            g.upload(str(xfs), f"/dev/{VG}/data")
            g.sync()
            g.shutdown()
        finally:
            g.close()
    return image


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
