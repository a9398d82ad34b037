"""Helpers shared by the data-path tests: real images, backups made through the engine,
and small loop-mounted filesystems."""

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from virtbackup.core.manifest import LAYOUT_STREAM, DiskRecord, Manifest, build_manifest
from virtbackup.core.progress import NullProgress
from virtbackup.core.streamformat import FrameEntry
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import BackupResult, DiskSource, back_up_disks
from virtbackup.engine.datapath.stream_reader import read_index, restore_stream
from virtbackup.engine.datapath.stream_writer import StreamResult, write_stream
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import stamp_time

MiB = 1024 * 1024

DOMAIN_XML = """<domain type='qemu'>
  <name>web1</name>
  <uuid>6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/web1.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
  </devices>
</domain>
"""


def disk_of(path: Path, target: str = "vda", fmt: str = "raw") -> DiskSource:
    size = os.stat(path).st_size
    if not path.is_file():
        with open(path, "rb") as device:
            size = device.seek(0, os.SEEK_END)
    return DiskSource(target=target, path=path, format=fmt, virtual_size=size)


def make_backup(
    dest: Path,
    disks: list[DiskSource],
    domain: str = "web1",
    chunk_size: int = 1 * MiB,
    layout: str = LAYOUT_STREAM,
) -> BackupResult:
    dest.mkdir(exist_ok=True)
    return back_up_disks(
        LocalStore(dest),
        domain,
        "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
        DOMAIN_XML,
        "offline",
        disks,
        NullProgress(),
        WriterOptions(chunk_size=chunk_size),
        layout=layout,
    )


def cmp_files(first: Path, second: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(first), str(second)], check=False).returncode == 0


@contextlib.contextmanager
def small_filesystem(size: int) -> Iterator[Path]:
    """A loop-mounted ext4 of `size` bytes, unmounted and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="vbtest-small-") as work:
        image = Path(work, "fs.img")
        mountpoint = Path(work, "mnt")
        mountpoint.mkdir()
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[Path]:
    """A read-only loop block device over `image`, detached on exit."""
    out = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(image)],
        check=True,
        capture_output=True,
        text=True,
    )
    device = Path(out.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=True)


def digest_by_coreutils(stream: Path, chunk_size: int = 4 * MiB) -> str:
    """The whole-disk digest as the README tells a user to check it:
    `lz4 -dc STREAM | split -b CHUNK --filter=sha256sum | sha256sum` (no shell)."""
    lz4 = subprocess.Popen(["lz4", "-dc", str(stream)], stdout=subprocess.PIPE)
    assert lz4.stdout is not None
    split = subprocess.Popen(
        ["split", "-b", str(chunk_size), "--filter=sha256sum"],
        stdin=lz4.stdout,
        stdout=subprocess.PIPE,
    )
    lz4.stdout.close()
    summed = subprocess.run(
        ["sha256sum"], stdin=split.stdout, capture_output=True, text=True, check=True
    )
    assert split.wait() == 0 and lz4.wait() == 0
    digest, name = summed.stdout.split()
    assert name == "-"
    return digest


def write_stream_file(source: Path, stream: Path, chunk_size: int = 1 * MiB) -> StreamResult:
    """Write `source` as the stream file `stream` through the engine's writer."""
    with open(stream, "wb") as out:
        return write_stream(source, out, NullProgress(), "vda", WriterOptions(chunk_size))


def restore_stream_file(stream: Path, target: Path) -> str:
    """Restore the stream file into the new file `target`; the whole-disk digest."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return restore_stream(read_index(stream, "vda"), fd, "vda", NullProgress())
    finally:
        os.close(fd)


def most_random_frame(stream: Path) -> FrameEntry:
    """The data frame that compressed least. A byte flipped inside it is sure to change
    the decoded data: in a well-compressed frame the byte may be a match offset inside a
    run of equal bytes, which decodes to the very same data (and is rightly not damage)."""
    entries = [e for e in read_index(stream, "vda").entries if not e.is_zero]
    return max(entries, key=lambda e: e.stored_length / e.data_length)


def manifest_at(domain: str, stamp: str) -> str:
    """A well-formed manifest.json of a one-disk backup of `domain` started at the time of
    `stamp`, for a backup directory made by hand (its stream is not what it describes)."""
    when = stamp_time(stamp)
    disk = DiskRecord(
        "vda", "/img", "raw", 4, 4, 4, "vda.raw.lz4", 1, 4 * MiB, "sha256-4MiB-chunks", "0" * 64
    )
    uuid = "12345678-1234-1234-1234-123456789abc"
    return build_manifest(Manifest("0.1.0", domain, uuid, when, when, "offline", (disk,)))
