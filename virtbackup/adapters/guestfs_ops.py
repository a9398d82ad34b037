"""The libguestfs appliance, as shrink uses it: launch, trim, swap, volume-group space.

One handle holds every disk of a domain, so a volume group spanning disks is whole. The
appliance is a small VM; under software emulation its launch takes 10-20 s, which is
why callers batch all their work into one handle. What the appliance prints while it
starts is kept (not shown), so a failed launch becomes one line naming the likely fix.

A launch is bounded in time: on some nested hosts qemu with KVM neither runs nor fails
but spins (libguestfs itself would wait 20 minutes). A watchdog thread kills the
hypervisor processes the launch started once the deadline passes; the launch then
fails, the handle is closed (libguestfs removes its sockets and temporary files) and
the caller gets one line naming the cause and the fix.
"""

import logging
import os
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from virtbackup.core.errors import UsageError, VirtbackupError, missing_binding

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
LAUNCH_LOG_LINES = 200
# A cold launch under software emulation (appliance build included) takes 30-60 s on a
# loaded 2-core host; ten times that is still a hang, not a slow start.
DEFAULT_LAUNCH_TIMEOUT = 300.0


class GuestfsSetupError(UsageError):
    """The libguestfs appliance cannot start on this host (exit 2): the message says why
    and how to fix it."""


class GuestfsError(VirtbackupError):
    """An operation inside the appliance failed."""


def launch_timeout_error(seconds: float, env: dict[str, str]) -> GuestfsSetupError:
    """The one line for a launch that did not finish in time (pure)."""
    head = f"the libguestfs appliance did not start within {seconds:g} s"
    if "force_tcg" not in env.get("LIBGUESTFS_BACKEND_SETTINGS", ""):
        return GuestfsSetupError(
            f"{head} (qemu with hardware virtualisation hangs on some nested hosts)",
            "set LIBGUESTFS_BACKEND_SETTINGS=force_tcg and LIBGUESTFS_BACKEND=direct, "
            "run 'libguestfs-test-tool' to diagnose, or raise appliance_timeout",
        )
    return GuestfsSetupError(
        head,
        "run 'libguestfs-test-tool' to see where it stops; on a slow or loaded host "
        "raise appliance_timeout in the configuration",
    )


@dataclass(frozen=True)
class Drive:
    path: str
    format: str
    readonly: bool = False


# -- launch errors ------------------------------------------------------------------------


def launch_error(message: str, log_lines: Sequence[str], env: dict[str, str]) -> GuestfsSetupError:
    """Turn a failed launch into one line with the fix (pure: tested with stored texts)."""
    text = "\n".join([message, *log_lines]).lower()
    backend = env.get("LIBGUESTFS_BACKEND", "")
    settings = env.get("LIBGUESTFS_BACKEND_SETTINGS", "")
    head = "the libguestfs appliance cannot start"
    if "force_tcg" not in settings and any(
        word in text
        for word in (
            "kvm",
            "kvm_buf_set_msrs",
            "assertion",
            "core dumped",
            "unexpectedly closed",
            "child process died",
            "qemu exited",
        )
    ):
        return GuestfsSetupError(
            f"{head}: qemu failed with hardware virtualisation",
            "set LIBGUESTFS_BACKEND_SETTINGS=force_tcg (software emulation, slower but "
            "works on nested hosts), and LIBGUESTFS_BACKEND=direct",
        )
    if ("vmlinuz" in text or "kernel" in text) and (
        "permission denied" in text or "cannot read" in text or "no kernel" in text
    ):
        return GuestfsSetupError(
            f"{head}: the host kernel cannot be read",
            "make it readable (chmod 0644 /boot/vmlinuz-*) or install linux-image-amd64, "
            "then run libguestfs-test-tool",
        )
    if "supermin" in text:
        return GuestfsSetupError(
            f"{head}: building the appliance failed (supermin)",
            "run 'libguestfs-test-tool' to see why; often a package is half-installed "
            "(apt-get install --reinstall libguestfs0) or /var/tmp is full",
        )
    if "libvirt" in text and backend != "direct":
        return GuestfsSetupError(
            f"{head}: its libvirt backend failed",
            "set LIBGUESTFS_BACKEND=direct (and LIBGUESTFS_BACKEND_SETTINGS=force_tcg on "
            "nested hosts)",
        )
    first = message.strip().splitlines()[0] if message.strip() else "launch failed"
    return GuestfsSetupError(
        f"{head}: {first}",
        "run 'libguestfs-test-tool' to see why; on nested hosts set "
        "LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg",
    )


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
            return f"cannot be mounted ({_first_line(err)})"
        try:
            try:
                self.g.fstrim("/")
            except RuntimeError as err:
                if not zero_fallback:
                    return f"cannot be trimmed ({_first_line(err)})"
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
                return f"no free space to reclaim ({_first_line(err)})"
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


def _first_line(err: BaseException) -> str:
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
                )
            except RuntimeError as err:
                raise GuestfsError(f"cannot add {drive.path}: {_first_line(err)}") from None
        try:
            launch_bounded(g, launch_timeout)
        except LaunchTimedOut:
            raise launch_timeout_error(launch_timeout, dict(os.environ)) from None
        except RuntimeError as err:
            if "discard" in str(err).lower():
                raise GuestfsError(
                    f"cannot pass discard down to the images: {_first_line(err)}",
                    "use copy mode (--to DIR)",
                ) from None
            raise launch_error(str(err), list(lines), dict(os.environ)) from None
        appliance = Appliance(g, drives)
        yield appliance
        appliance.finish()
    finally:
        g.close()


# -- the launch watchdog ---------------------------------------------------------------------


class LaunchTimedOut(RuntimeError):
    """The watchdog killed a launch that did not finish in time."""


def launch_bounded(g: Any, timeout: float) -> None:
    """`g.launch()`, but processes it started are killed after `timeout` seconds.

    The bindings release the GIL during the launch, so a thread can watch it. What the
    launch started is told apart from our other children by being new: children that
    existed before the launch are never touched. After the kill libguestfs notices that
    qemu died and `launch` raises; that error is replaced by LaunchTimedOut.
    """
    before = set(child_processes(os.getpid()))
    finished = threading.Event()
    fired = threading.Event()

    def watch() -> None:
        if finished.wait(timeout):
            return
        fired.set()
        killed: set[int] = set()
        # Keep watching until the launch returns: qemu may be started after the deadline
        # (while the appliance was still being built).
        while not finished.is_set():
            for pid in set(child_processes(os.getpid())) - before - killed:
                log.debug("appliance launch exceeded %g s: killing process %d", timeout, pid)
                _kill_tree(pid)
                killed.add(pid)
            finished.wait(0.5)

    watchdog = threading.Thread(target=watch, name="guestfs-launch-watchdog", daemon=True)
    watchdog.start()
    try:
        g.launch()
    except RuntimeError:
        if fired.is_set():
            raise LaunchTimedOut(f"launch killed after {timeout:g} s") from None
        raise
    finally:
        finished.set()
        watchdog.join()
    if fired.is_set():  # finished just as the deadline passed: qemu may be dead already
        raise LaunchTimedOut(f"launch killed after {timeout:g} s")


def child_processes(parent: int) -> list[int]:
    """PIDs whose parent is `parent`, from /proc."""
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 1 and int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its own children (qemu runs in a process group of its own)."""
    for child in child_processes(pid):
        _kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"  # a zombie is dead; libguestfs reaps it
