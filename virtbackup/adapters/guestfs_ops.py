"""The libguestfs appliance, as shrink uses it: launch, trim, swap, volume-group space.

One handle holds every disk of a domain, so a volume group spanning disks is whole. The
appliance is a small VM; under software emulation its launch takes 10-20 s, which is
why callers batch all their work into one handle. What the appliance prints while it
starts is kept (not shown), so a failed launch becomes one line naming the likely fix.

A launch is bounded in time (adapters/guestfs_launch: a watchdog kills a launch that
hangs); after a failed launch the handle is closed (libguestfs removes its sockets and
temporary files) and the caller gets one line naming the cause and the fix.
"""

import logging
import os
import secrets
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from virtbackup.adapters.guestfs_launch import (
    DEFAULT_LAUNCH_TIMEOUT,
    LaunchTimedOut,
    launch_bounded,
    launch_error,
    launch_timeout_error,
)
from virtbackup.core.errors import VirtbackupError, missing_binding

log = logging.getLogger(__name__)


def import_guestfs() -> ModuleType:
    """The libguestfs bindings (python3-guestfs), imported when first needed."""
    try:
        import guestfs
    except ImportError as err:
        raise missing_binding("libguestfs", "python3-guestfs", err) from None
    module: ModuleType = guestfs
    return module


# Our temporary LV in a guest volume group; a leftover of a killed run is removed.
TEMP_LV_PREFIX = "virtbackup_shrink_"
# Linux swap keeps its header (label, UUID, version) in the first page; the signature
# sits in the last 10 bytes of that page, whose size depends on the guest architecture.
SWAP_PAGE_SIZES = (4096, 8192, 16384, 65536)
SWAP_SIGNATURES = (b"SWAPSPACE2", b"SWAP-SPACE")
# Signatures of a hibernation image written over the swap header: discarding the swap
# would destroy the saved session of a hibernated guest.
HIBERNATION_SIGNATURES = (b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001")
LAUNCH_LOG_LINES = 200  # of what the appliance prints while it starts, kept for the error


class GuestfsError(VirtbackupError):
    """An operation inside the appliance failed."""


@dataclass(frozen=True)
class Drive:
    path: str
    format: str
    readonly: bool = False
    nbd_socket: str | None = None  # read from this NBD server's unix socket, not `path`


# -- the handle --------------------------------------------------------------------------


class Appliance:
    """A launched handle on some drives; use `open_appliance`."""

    def __init__(self, g: Any, drives: Sequence[Drive]) -> None:
        self.g = g
        self.drives = tuple(drives)

    # -- discovery --------------------------------------------------------------------

    def filesystems(self) -> dict[str, str]:
        """Mountable -> type; btrfs subvolumes are left out (their device is listed)."""
        found: dict[str, str] = self.g.list_filesystems()
        return {dev: kind for dev, kind in sorted(found.items()) if not dev.startswith("btrfsvol:")}

    def volume_groups(self) -> list[str]:
        return sorted(self.g.vgs())

    def read_only_lvs(self) -> set[str]:
        """/dev/VG/LV of every LV whose permission is read-only (lv_attr 'r')."""
        attrs = {_uuid(lv["lv_uuid"]): lv["lv_attr"] for lv in self.g.lvs_full()}
        return {
            dev
            for dev in self.g.lvs()
            if (attr := attrs.get(_uuid(self.g.lvuuid(dev)))) and len(attr) > 1 and attr[1] == "r"
        }

    def used_bytes(self, fs: str) -> int | None:
        """Bytes used in a filesystem, mounted read-only for the look; None if unmountable."""
        try:
            self.g.mount_ro(fs, "/")
        except RuntimeError:
            return None
        try:
            st = self.g.statvfs("/")
            return int((st["blocks"] - st["bfree"]) * st["frsize"])
        finally:
            self.g.umount_all()

    # -- changes ----------------------------------------------------------------------

    def trim(self, fs: str, *, zero_fallback: bool = False) -> str | None:
        """fstrim a filesystem mounted with discard; a reason string if it was skipped.

        With `zero_fallback` (copy mode) a filesystem that cannot trim gets its free
        space overwritten with zeros instead, which `qemu-img convert` then skips.
        """
        try:
            self.g.mount_options("discard", fs, "/")
        except RuntimeError as err:
            return f"cannot be mounted ({first_line(err)})"
        try:
            try:
                self.g.fstrim("/")
            except RuntimeError as err:
                if not zero_fallback:
                    return f"cannot be trimmed ({first_line(err)})"
                self.g.zero_free_space("/")
            self.g.sync()
        finally:
            self.g.umount_all()
        return None

    def discard_swap(self, dev: str) -> str | None:
        """Discard a swap area's contents, keeping its header (label, UUID, version)."""
        head = self.g.pread_device(dev, max(SWAP_PAGE_SIZES), 0)
        page = swap_header_size(head)
        if page is None:
            if any(sig in head for sig in HIBERNATION_SIGNATURES):
                return "holds a hibernation image: left alone"
            return "no Linux swap signature: left alone"
        header = head[:page]
        with signals_deferred():  # a Ctrl-C between the two would leave no swap header
            self.g.blkdiscard(dev)
            written = self.g.pwrite_device(dev, header, 0)
        if written != len(header) or self.g.pread_device(dev, page, 0) != header:
            raise GuestfsError(f"{dev}: the swap header could not be written back")
        self.g.sync()
        return None

    def reclaim_vg_free(self, vg: str) -> str | None:
        """Discard the free extents of a volume group through a temporary LV."""
        self._remove_leftover_lvs(vg)
        name = f"{TEMP_LV_PREFIX}{secrets.token_hex(4)}"
        dev = f"/dev/{vg}/{name}"
        # The temporary LV must not outlive us: a guest booting with it would find its
        # free space gone (a killed run's LV is removed by the next one, above).
        with signals_deferred():
            try:
                self.g.lvcreate_free(name, vg, 100)
            except RuntimeError as err:
                return f"no free space to reclaim ({first_line(err)})"
            try:
                self.g.blkdiscard(dev)
                self.g.sync()
            finally:
                self.g.lvremove(dev)
        return None

    def _remove_leftover_lvs(self, vg: str) -> None:
        for dev in self.g.lvs():
            if dev.startswith(f"/dev/{vg}/{TEMP_LV_PREFIX}"):
                log.info("removing %s, left by an interrupted shrink", dev)
                self.g.lvremove(dev)

    def finish(self) -> None:
        """Flush and stop the appliance; an error here means writes may be lost."""
        self.g.shutdown()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block is done (then take effect as usual)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def swap_header_size(head: bytes) -> int | None:
    """The page size of a Linux swap header at the start of `head`, or None."""
    for page in SWAP_PAGE_SIZES:
        if len(head) >= page and head[page - 10 : page] in SWAP_SIGNATURES:
            return page
    return None


def _uuid(text: str) -> str:
    return text.replace("-", "").lower()


def _nbd_options(drive: Drive) -> dict[str, Any]:
    if drive.nbd_socket is None:
        return {}
    return {"protocol": "nbd", "server": [f"unix:{drive.nbd_socket}"]}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def open_appliance(
    drives: Sequence[Drive],
    *,
    discard: str = "enable",
    on_progress: Callable[[int, int], None] | None = None,
    launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT,
) -> Iterator[Appliance]:
    """Launch an appliance on `drives` (added in order: /dev/sda, /dev/sdb, ...).

    A launch that takes longer than `launch_timeout` seconds is killed and fails with
    GuestfsSetupError. `discard`: "enable" fails the launch when discard cannot reach the
    image, "besteffort" does not. On leaving the block normally the appliance is shut
    down cleanly (flushing every write); on an error it is closed.
    """
    guestfs = import_guestfs()
    g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
    lines: deque[str] = deque(maxlen=LAUNCH_LOG_LINES)

    def on_event(event: int, _handle: int, buf: bytes | str, array: Sequence[int]) -> None:
        if event == guestfs.EVENT_PROGRESS and on_progress is not None and len(array) >= 4:
            on_progress(int(array[2]), int(array[3]))
            return
        text = buf.decode(errors="replace") if isinstance(buf, bytes) else str(buf)
        for line in text.splitlines():
            if line.strip():
                lines.append(line)

    try:
        # qemu in its own process group: a Ctrl-C in the terminal reaches us only, and we
        # stop between steps instead of the appliance dying in the middle of one.
        g.set_pgroup(True)
        g.set_event_callback(
            on_event,
            guestfs.EVENT_LIBRARY
            | guestfs.EVENT_WARNING
            | guestfs.EVENT_APPLIANCE
            | guestfs.EVENT_PROGRESS,
        )
        for drive in drives:
            try:
                g.add_drive_opts(
                    drive.path,
                    format=drive.format,
                    readonly=drive.readonly,
                    discard=None if drive.readonly else discard,
                    **_nbd_options(drive),
                )
            except RuntimeError as err:
                label = drive.nbd_socket or drive.path
                raise GuestfsError(f"cannot add {label}: {first_line(err)}") from None
        try:
            launch_bounded(g, launch_timeout)
        except LaunchTimedOut:
            raise launch_timeout_error(launch_timeout, dict(os.environ)) from None
        except RuntimeError as err:
            if "discard" in str(err).lower():
                raise GuestfsError(
                    f"cannot pass discard down to the images: {first_line(err)}",
                    "use copy mode (--to DIR)",
                ) from None
            raise launch_error(str(err), list(lines), dict(os.environ)) from None
        appliance = Appliance(g, drives)
        yield appliance
        appliance.finish()
    finally:
        g.close()
