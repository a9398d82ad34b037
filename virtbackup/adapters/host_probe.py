"""Cheap, harmless looks at the host for `virtbackup doctor`: programs, images,
filesystems, the libguestfs appliance. Each answers a question or says why it cannot.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import images, runner
from virtbackup.adapters.guestfs_launch import (
    LaunchTimedOut,
    launch_bounded,
    launch_error,
    launch_timeout_error,
)
from virtbackup.adapters.guestfs_ops import import_guestfs
from virtbackup.adapters.images import UnreadableInfo, image_info
from virtbackup.core.errors import CommandFailed, MissingComponent

log = logging.getLogger(__name__)


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

    Shared (-U): the image may be open in a running qemu; only its header is read.
    """
    try:
        info = image_info(path, "qcow2", force_share=True)
    except (CommandFailed, MissingComponent, UnreadableInfo) as err:
        return Probe(None, str(err))
    return Probe(info.compat)


def punches_holes(directory: Path) -> Probe:
    """Whether the filesystem holding `directory` frees the blocks of a punched hole."""
    try:
        return Probe(images.punches_holes(directory))
    except OSError as err:
        return Probe(None, f"cannot try in {directory}: {err.strerror}")


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
