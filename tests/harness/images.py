"""Image builders: sparse raw and qcow2 images holding real filesystems with real content.

Each image carries files copied from the host (compressible text and incompressible
binaries) and, optionally, data that was written and then deleted, as a long-lived guest
disk does: the blocks still hold it though no file owns them.
"""

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024

# Host files of both kinds: text that compresses well, binaries that hardly do.
CONTENT_SOURCES = [Path("/usr/share/common-licenses"), Path("/usr/share/perl5"), Path("/usr/bin")]


@dataclass
class BuiltImage:
    path: Path
    format: str
    fs: str
    files: dict[str, str] = field(default_factory=dict)  # path in the fs -> sha256


def host_files(budget: int) -> Iterator[Path]:
    """Regular host files, in a stable order, until about `budget` bytes."""
    used = 0
    for root in CONTENT_SOURCES:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                if path.is_symlink() or not path.is_file():
                    continue
                size = path.stat().st_size
                if used + size > budget:
                    return
                used += size
                yield path


def build_fs_image(
    path: Path,
    *,
    size: int = 64 * MiB,
    fs: str = "ext4",
    fmt: str = "raw",
    content: int = 8 * MiB,
    deleted: int = 4 * MiB,
) -> BuiltImage:
    """A sparse image of `size` with a filesystem, `content` bytes of host files, and
    `deleted` bytes of random data written and then removed again."""
    raw = path if fmt == "raw" else path.with_suffix(".build.raw")
    with open(raw, "wb") as f:
        f.truncate(size)
    mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}[fs]
    subprocess.run([*mkfs, str(raw)], check=True)
    image = BuiltImage(path=path, format=fmt, fs=fs)
    with tempfile.TemporaryDirectory(prefix="vbtest-mnt-") as mnt:
        subprocess.run(["mount", "-o", "loop", str(raw), mnt], check=True)
        try:
            for index, source in enumerate(host_files(content)):
                data = source.read_bytes()
                name = f"files/{index:04d}-{source.name}"
                (Path(mnt) / name).parent.mkdir(exist_ok=True)
                (Path(mnt) / name).write_bytes(data)
                image.files[name] = hashlib.sha256(data).hexdigest()
            if deleted:
                garbage = Path(mnt) / "garbage"
                garbage.write_bytes(os.urandom(deleted))
                os.sync()
                garbage.unlink()
        finally:
            subprocess.run(["umount", mnt], check=True)
    if fmt != "raw":
        subprocess.run(["qemu-img", "convert", "-O", fmt, str(raw), str(path)], check=True)
        raw.unlink()
    return image


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def read_file_from_ext4(image: Path, name: str) -> bytes:
    """Read one file out of a raw ext4 image without mounting it (debugfs)."""
    out = subprocess.run(
        ["debugfs", "-R", f"cat /{name}", str(image)], check=True, capture_output=True
    )
    return out.stdout
