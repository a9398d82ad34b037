"""Image files on the host: what `qemu-img info` says about one, what it occupies,
whether its filesystem punches holes, and merging an overlay into its backing image.

Every `qemu-img info` of the package runs through `image_info`, so that its flags and
its bounded runtime are chosen in one place: `force_share` (-U) reads an image that a
running qemu may hold open (the answer may then be slightly stale, never harmful);
without it qemu-img takes the image's lock, and so fails on an image in use.
"""

import ctypes
import errno
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtbackup.adapters import runner
from virtbackup.core.errors import VirtbackupError

INFO_TIMEOUT = 60.0
COMMIT_TIMEOUT = 24 * 3600.0
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
PROBE_BYTES = 8192


class UnreadableInfo(VirtbackupError):
    """qemu-img info answered with something that is not the JSON it documents."""


@dataclass(frozen=True)
class ImageInfo:
    """One image as qemu-img sees it; `backing_chain` only when it was asked for."""

    path: str
    format: str
    virtual_size: int
    actual_size: int | None  # bytes on the host, as qemu-img counts them
    backing_file: str | None  # what the image's header names, as written there
    compat: str | None  # qcow2: "0.10" (version 2) or "1.1" (version 3)
    extents: tuple[str, ...]  # vmdk: the extent files its descriptor names
    backing_chain: tuple[str, ...] = ()  # the images below, top first, full paths


def image_info(
    path: str,
    fmt: str | None = None,
    *,
    force_share: bool,
    backing_chain: bool = False,
    timeout: float | None = None,
    objects: tuple[str, ...] = (),
) -> ImageInfo:
    """`qemu-img info` of `path` (probing the format when `fmt` is None), killed after
    `timeout` seconds (INFO_TIMEOUT by default); `objects` are qemu objects it needs
    (`--object secret,...` for a source with credentials).

    Raises CommandFailed when qemu-img cannot open the image (CommandTimedOut when it
    hangs on it), UnreadableInfo when its answer cannot be read.
    """
    argv = ["qemu-img", "info", "--output=json", *objects]
    if backing_chain:
        argv.append("--backing-chain")
    if force_share:
        argv.append("-U")
    if fmt:
        argv += ["-f", fmt]
    out = runner.run_text([*argv, path], timeout=timeout or INFO_TIMEOUT)
    try:
        parsed = json.loads(out)
        chain = parsed if isinstance(parsed, list) else [parsed]
        return _info(path, chain)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise UnreadableInfo(f"qemu-img info {path}: unreadable output ({err})") from None


def _info(path: str, chain: list[Any]) -> ImageInfo:
    top = chain[0]
    specific = (top.get("format-specific") or {}).get("data") or {}
    below = tuple(
        entry.get("full-backing-filename") or lower.get("filename", "?")
        for entry, lower in zip(chain, chain[1:], strict=False)
    )
    return ImageInfo(
        path=path,
        format=str(top["format"]),
        virtual_size=int(top["virtual-size"]),
        actual_size=top.get("actual-size"),
        backing_file=top.get("backing-filename"),
        compat=str(specific["compat"]) if specific.get("compat") else None,
        extents=tuple(str(extent["filename"]) for extent in specific.get("extents", ())),
        backing_chain=below,
    )


def commit(overlay: str) -> None:
    """Merge a qcow2 overlay nothing runs on into its backing image."""
    runner.run(["qemu-img", "commit", "-q", "-f", "qcow2", overlay], timeout=COMMIT_TIMEOUT)


def create_overlay(path: Path, backing: str, backing_format: str, size: int) -> None:
    """A new qcow2 image at `path` of `size` bytes that reads what it has not written
    from `backing` (a file or an NBD URI) without opening it now."""
    runner.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", backing_format]
        + ["-b", backing, str(path), str(size)],
        timeout=INFO_TIMEOUT,
    )


def rebase_standalone(path: Path) -> None:
    """Copy into the qcow2 image at `path` everything it reads from its backing, which
    it then no longer has."""
    argv = ["qemu-img", "rebase", "-q", "-f", "qcow2", "-b", "", str(path)]
    runner.run(argv, timeout=COMMIT_TIMEOUT)


def write_into(image: str, fmt: str, target: str, objects: tuple[str, ...] = ()) -> None:
    """Copy `image` into the existing `target` (a device or a qemu name) of the same
    format and size; holes are written as zeroes, since the target is not blank."""
    runner.run(["qemu-img", "convert", "-n", *objects, "-f", fmt, "-O", fmt, image, target])


def allocated_bytes(path: str) -> int | None:
    """What a regular file occupies on the host (st_blocks); None for anything else (a
    block device occupies all of its size). OSError when it cannot be looked at."""
    st = os.stat(path)
    return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else None


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def host_size(path: str) -> int | None:
    """Bytes of the file, or of the block device, on the host."""
    try:
        if not is_block_device(path):
            return os.stat(path).st_size
        with open(path, "rb") as device:
            return device.seek(0, os.SEEK_END)
    except OSError:
        return None


def punches_holes(directory: Path) -> bool:
    """Whether the filesystem holding `directory` frees blocks on fallocate(PUNCH_HOLE):
    what a discard from the guest becomes in a file image. Without it (NFS before 4.2,
    many FUSE filesystems) trims inside the guest free nothing on the host.

    Tried on an unnamed O_TMPFILE file in `directory` (nothing is left even if we are
    killed); a filesystem without O_TMPFILE gets a named one, removed at once. OSError
    when it cannot be told.
    """
    fd = _scratch_file(directory)
    try:
        os.write(fd, b"\xff" * PROBE_BYTES)
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise OSError(code, f"fallocate: {os.strerror(code)}")
    finally:
        os.close(fd)


def _scratch_file(directory: Path) -> int:
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, name = tempfile.mkstemp(prefix=".virtbackup-probe-", dir=directory)
    os.unlink(name)
    return fd
