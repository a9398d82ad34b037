"""The tiny real guest boots, runs commands, powers off cleanly, freezes and trims.

Each test boots one guest (a few seconds under TCG); checks that need the same kind of
guest share a boot.
"""

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness.guest import (
    GUEST_MOUNT,
    GuestUnavailable,
    MiB,
    TinyGuestFactory,
    disk_as_raw,
    fs_is_clean,
    module_load_order,
    read_file_from_disk,
)

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]


def allocated(path: os.PathLike[str]) -> int:
    return os.stat(path).st_blocks * 512


def test_commands_run_inside_and_agent_shutdown_keeps_the_data(
    tiny_guest: TinyGuestFactory, libvirt: Any
) -> None:
    guest = tiny_guest("qcow2")
    assert guest.agent("guest-ping") == {}
    assert guest.exec("echo out; echo err >&2; exit 3") == (3, "out\nerr\n")

    code, out = guest.exec(
        f"dd if=/dev/urandom of={GUEST_MOUNT}/x bs=1M count=4 2>/dev/null"
        f" && sync && sha256sum {GUEST_MOUNT}/x"
    )
    assert code == 0, out
    digest_inside = out.split()[0]

    guest.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
    guest.wait_state(libvirt.VIR_DOMAIN_SHUTOFF, timeout=180)
    # Powered off by the guest itself: libvirt says "shutdown", not "destroyed".
    assert guest.dom.state()[1] == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN

    raw = disk_as_raw(guest.disk, guest.disk_format, guest.disk.parent)
    data = read_file_from_disk(raw, "/x")
    assert len(data) == 4 * MiB
    assert hashlib.sha256(data).hexdigest() == digest_inside
    clean, report = fs_is_clean(raw)
    assert clean, report


def test_acpi_power_button_powers_off_cleanly(tiny_guest: TinyGuestFactory, libvirt: Any) -> None:
    guest = tiny_guest("raw", discard=False)
    # No sync here: the power-off path itself must flush and unmount.
    code, out = guest.exec(f"echo before-the-button > {GUEST_MOUNT}/note")
    assert code == 0, out

    guest.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    guest.wait_state(libvirt.VIR_DOMAIN_SHUTOFF, timeout=180)
    assert guest.dom.state()[1] == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN
    assert "virtbackup-guest: powering off" in guest.console()

    clean, report = fs_is_clean(guest.disk)
    assert clean, report
    assert read_file_from_disk(guest.disk, "/note") == b"before-the-button\n"


def test_agent_freeze_holds_writes_and_trim_releases_deleted_blocks(
    tiny_guest: TinyGuestFactory,
) -> None:
    guest = tiny_guest("qcow2", discard=True)

    # A writer appending the guest's uptime ten times a second: while the filesystem is
    # frozen its writes block, which leaves a gap in the timestamps.
    ticks = f"{GUEST_MOUNT}/ticks"
    guest.spawn(f"while :; do cut -d' ' -f1 /proc/uptime >> {ticks}; usleep 100000; done")

    def tick_count() -> int:
        return int(guest.exec(f"cat {ticks} 2>/dev/null | wc -l")[1])

    while tick_count() < 3:
        time.sleep(0.2)

    frozen_at = tick_count()  # guest-exec is refused while frozen: count before
    assert guest.dom.fsFreeze() >= 1
    assert guest.agent("guest-fsfreeze-status") == "frozen"
    time.sleep(3)
    assert guest.dom.fsThaw() >= 1
    assert guest.agent("guest-fsfreeze-status") == "thawed"
    # The writer blocked in the freeze resumes on its own time: wait for its next ticks
    # (on a loaded host that can take a moment) before looking for the gap.
    deadline = time.monotonic() + 60
    while tick_count() < frozen_at + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    code, out = guest.exec(f"echo after-thaw > {GUEST_MOUNT}/after && sync && cat {ticks}")
    assert code == 0, out
    times = [float(line) for line in out.split()]
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) >= 2.0, times

    # The guest mounts without `-o discard`: deleting alone gives nothing back to the
    # host, fstrim through the agent does.
    before = allocated(guest.disk)
    code, out = guest.exec(f"dd if=/dev/urandom of={GUEST_MOUNT}/big bs=1M count=16 && sync")
    assert code == 0, out
    written = allocated(guest.disk)
    assert written >= before + 15 * MiB
    code, out = guest.exec(f"rm {GUEST_MOUNT}/big && sync")
    assert code == 0, out
    assert allocated(guest.disk) >= written - MiB

    guest.dom.fSTrim(None, 0, 0)
    assert allocated(guest.disk) <= written - 15 * MiB


def test_modules_load_after_their_dependencies_and_built_in_ones_are_skipped(
    tmp_path: Path,
) -> None:
    """Pure: no guest boots. Which drivers a kernel builds in differs between versions."""
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\n"
        "kernel/fs/mbcache.ko.xz:\n"
        "kernel/drivers/input/evdev.ko.xz:\n"
    )
    (tmp_path / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")
    order = module_load_order(tmp_path, ("virtio_blk", "ext4", "evdev"))
    assert [p.relative_to(tmp_path).as_posix() for p in order] == [
        "kernel/fs/jbd2/jbd2.ko.xz",
        "kernel/fs/mbcache.ko.xz",
        "kernel/fs/ext4/ext4.ko.xz",
        "kernel/drivers/input/evdev.ko.xz",
    ]
    with pytest.raises(GuestUnavailable, match="button not in"):
        module_load_order(tmp_path, ("button",))
