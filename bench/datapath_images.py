"""Reference images of the data-path benchmark, built once and cached in the work directory.

- `reference.raw`: 8 GiB sparse raw image, ext4 holding ~1.5 GiB of host files of which a
  fifth were deleted again (their blocks keep the data);
- `reference.qcow2`: the same converted with `qemu-img convert` to qcow2 compat 1.1 (a
  file with little sparseness: qcow2 stores only allocated clusters; compat 1.1 keeps
  the persistent dirty bitmaps that libvirt's checkpoints need);
- `full-2g.raw`: a 2 GiB ext4 filled to ~95 % with host files (almost no holes: the
  ratio to the seed there is pure compression throughput);
- `size-<N>g.raw`: N GiB sparse raw images holding the same ~0.7 GiB of host files, to
  show that time grows with allocated data, not with virtual size.
"""

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20
HOST_TREES = ("/usr", "/var/lib", "/opt")


def reference_raw(work: Path) -> Path:
    image = work / "reference.raw"
    if not image.exists():
        _build(image, 8 * GiB, 1.5 * GiB, delete_every=5)
    return image


def reference_qcow2(work: Path) -> Path:
    image = work / "reference.qcow2"
    if not image.exists():
        partial = image.with_suffix(".partial")
        subprocess.run(
            [
                "qemu-img",
                "convert",
                "-O",
                "qcow2",
                "-o",
                "compat=1.1",
                str(reference_raw(work)),
                str(partial),
            ],
            check=True,
        )
        partial.rename(image)
    return image


def full_raw(work: Path) -> Path:
    image = work / "full-2g.raw"
    if not image.exists():
        _build(image, 2 * GiB, None, delete_every=0)
    return image


def size_raw(work: Path, size_gib: int) -> Path:
    image = work / f"size-{size_gib}g.raw"
    if not image.exists():
        _build(image, size_gib * GiB, 0.7 * GiB, delete_every=0)
    return image


def data_extents(path: Path) -> Iterator[tuple[int, int]]:
    """(offset, length) of the allocated ranges of a file (SEEK_DATA / SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        at = 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end - start
            at = end
    finally:
        os.close(fd)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def lz4_sample(work: Path, size: int = 1 * GiB) -> Path:
    """Up to `size` bytes of the reference image's data, dense: lz4's throughput on it is
    the compression bound of the machine."""
    sample = work / "lz4-sample.bin"
    if not sample.exists():
        source = reference_raw(work)
        partial = sample.with_suffix(".partial")
        with open(source, "rb") as src, open(partial, "wb") as out:
            left = size
            for start, length in data_extents(source):
                src.seek(start)
                while length > 0 and left > 0:
                    block = src.read(min(length, left, 4 * MiB))
                    out.write(block)
                    length -= len(block)
                    left -= len(block)
                if left <= 0:
                    break
        partial.rename(sample)
    return sample


def _build(image: Path, size: int, data: float | None, delete_every: int) -> None:
    """An ext4 image of `size` bytes with `data` bytes of host files (None: until full)."""
    print(f"building {image} ({size / GiB:.0f} GiB)", flush=True)
    partial = image.with_suffix(".partial")
    with open(partial, "wb") as f:
        f.truncate(size)
    # Lazy inode tables that are never initialised (noinit_itable) stay holes.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(partial)], check=True)
    with tempfile.TemporaryDirectory(prefix="vbbench-") as mnt:
        subprocess.run(["mount", "-o", "loop,noinit_itable", str(partial), mnt], check=True)
        try:
            _fill(Path(mnt), data, delete_every)
        finally:
            subprocess.run(["umount", mnt], check=True)
    partial.rename(image)


def _fill(mnt: Path, data: float | None, delete_every: int) -> None:
    copied = 0
    number = 0
    for source in _host_files():
        if data is not None and copied >= data:
            break
        number += 1
        target = mnt / f"d{number // 500}" / f"{number}-{source.name}"
        target.parent.mkdir(exist_ok=True)
        try:
            shutil.copyfile(source, target)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                target.unlink(missing_ok=True)
                break
            continue
        copied += target.stat().st_size
        if delete_every and number % delete_every == 0:  # deleted later: blocks keep data
            target.with_name(target.name + ".del").touch()
    os.sync()
    for marker in mnt.rglob("*.del"):
        marker.unlink()
        marker.with_name(marker.name[: -len(".del")]).unlink(missing_ok=True)


def _host_files() -> Iterator[Path]:
    """Regular files of the host trees, over and over (an image may want more)."""
    found = True
    while found:
        found = False
        for root in HOST_TREES:
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    path = Path(dirpath, name)
                    if not path.is_symlink() and path.is_file():
                        found = True
                        yield path
