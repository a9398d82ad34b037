"""Cheap, harmless looks at the host for `virtbackup doctor`: programs, images,
filesystems, the libguestfs appliance. Each answers a question or says why it cannot.
"""

import ctypes
import errno
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.adapters.bindings import import_guestfs
from virtbackup.adapters.guestfs_ops import (
    LaunchTimedOut,
    launch_bounded,
    launch_error,
    launch_timeout_error,
)
from virtbackup.core.errors import CommandFailed, MissingComponent

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 60.0
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
PROBE_BYTES = 8192


@dataclass(frozen=True)
class Probe:
    """An answer, or why there is none."""

    value: str | bool | int | None
    error: str | None = None


def program(name: str) -> str | None:
    """The path of program `name`, or None when it is not installed."""
    try:
        return runner.require_program(name)
    except MissingComponent:
        return None


def qcow2_compat(path: str) -> Probe:
    """The compat level of a qcow2 image: "0.10" (version 2) or "1.1" (version 3).

    -U: the image may be open in a running qemu; only its header is read.
    """
    argv = ["qemu-img", "info", "--output=json", "-U", "-f", "qcow2", path]
    try:
        data = json.loads(runner.run_text(argv, timeout=QEMU_IMG_TIMEOUT))
    except (CommandFailed, MissingComponent) as err:
        return Probe(None, str(err))
    except ValueError as err:
        return Probe(None, f"qemu-img info {path}: unreadable output ({err})")
    compat = data.get("format-specific", {}).get("data", {}).get("compat")
    return Probe(str(compat) if compat else None)


def punches_holes(directory: Path) -> Probe:
    """Whether the filesystem holding `directory` frees blocks on fallocate(PUNCH_HOLE):
    what a discard from the guest becomes in a file image. Without it (NFS before 4.2,
    many FUSE filesystems) trims inside the guest free nothing on the host.

    Tried on an unnamed O_TMPFILE file in `directory` (nothing is left even if we are
    killed); a filesystem without O_TMPFILE gets a named one, removed at once.
    """
    try:
        fd = _scratch_file(directory)
    except OSError as err:
        return Probe(None, f"cannot try in {directory}: {err.strerror}")
    try:
        os.write(fd, b"\xff" * PROBE_BYTES)
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0:
            return Probe(True)
        code = ctypes.get_errno()
        if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return Probe(False)
        return Probe(None, f"fallocate in {directory}: {os.strerror(code)}")
    except OSError as err:
        return Probe(None, f"cannot try in {directory}: {err.strerror}")
    finally:
        os.close(fd)


def _scratch_file(directory: Path) -> int:
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, name = tempfile.mkstemp(prefix=".virtbackup-doctor-", dir=directory)
    os.unlink(name)
    return fd


def free_bytes(path: Path) -> Probe:
    """Free bytes of the filesystem holding `path` (without the blocks reserved for root:
    a full filesystem hurts other writers long before root's reserve is used up)."""
    try:
        st = os.statvfs(path)
    except OSError as err:
        return Probe(None, err.strerror)
    return Probe(st.f_bavail * st.f_frsize)


def dest_problem(dest: Path) -> str | None:
    """Why a backup cannot be written into `dest`, or None."""
    if not dest.exists():
        return f"{dest} does not exist"
    if not dest.is_dir():
        return f"{dest} is not a directory"
    if not os.access(dest, os.W_OK | os.X_OK) or os.statvfs(dest).f_flag & os.ST_RDONLY:
        return f"{dest} is not writable"
    return None


def guestfs_appliance(launch_timeout: float) -> Probe:
    """Launch the libguestfs appliance on a 1 MiB scratch disk (10-20 s under TCG):
    True when it boots, else the one-line reason and fix from the shrink adapter."""
    try:
        guestfs = import_guestfs()
    except MissingComponent as err:
        return Probe(False, str(err))
    g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
    lines: list[str] = []

    def on_event(_event: int, _handle: int, buf: bytes | str, _array: object) -> None:
        text = buf.decode(errors="replace") if isinstance(buf, bytes) else str(buf)
        lines.extend(line for line in text.splitlines() if line.strip())

    try:
        g.set_pgroup(True)
        g.set_event_callback(
            on_event, guestfs.EVENT_LIBRARY | guestfs.EVENT_WARNING | guestfs.EVENT_APPLIANCE
        )
        g.add_drive_scratch(1024 * 1024)
        launch_bounded(g, launch_timeout)
        g.shutdown()
    except LaunchTimedOut:
        return Probe(False, str(launch_timeout_error(launch_timeout, dict(os.environ))))
    except RuntimeError as err:
        return Probe(False, str(launch_error(str(err), lines[-200:], dict(os.environ))))
    finally:
        g.close()
    return Probe(True)
