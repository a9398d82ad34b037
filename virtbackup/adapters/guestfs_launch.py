"""Starting the libguestfs appliance safely: a launch bounded in time, and a failed or
hung launch turned into one line that names the likely fix.

On some nested hosts qemu with KVM neither runs nor fails but spins (libguestfs itself
would wait 20 minutes). `launch_bounded` has a watchdog thread kill the hypervisor
processes the launch started once the deadline passes; the launch then fails, and the
caller (adapters/guestfs_ops) closes the handle and raises `launch_timeout_error`.
`launch_error` reads what the appliance printed and says what to do.
"""

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from virtbackup.core.errors import UsageError

log = logging.getLogger(__name__)

# A cold launch under software emulation (appliance build included) takes 30-60 s on a
# loaded 2-core host; ten times that is still a hang, not a slow start.
DEFAULT_LAUNCH_TIMEOUT = 300.0


class GuestfsSetupError(UsageError):
    """The libguestfs appliance cannot start on this host (exit 2): the message says why
    and how to fix it."""


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
