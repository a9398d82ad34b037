"""adapters/guestfs_ops: launch errors as one line with the fix; swap headers."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from virtbackup.adapters.guestfs_ops import (
    GuestfsSetupError,
    launch_error,
    signals_deferred,
    swap_header_size,
)
from virtbackup.core.errors import Interrupted

LAUNCH_FAILED = (
    "guestfs_launch failed.\nThis usually means the libguestfs appliance failed to start "
    "or crashed.\nDo:\n  export LIBGUESTFS_DEBUG=1 LIBGUESTFS_TRACE=1\nand run the command again."
)
# What qemu printed here when KVM was used on this nested host (captured by the events).
KVM_ABORT = [
    "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69",
    "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion "
    "`ret == cpu->kvm_msr_buf->nmsrs' failed.",
]
TCG = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


@pytest.mark.parametrize(
    ("message", "lines", "env", "expected"),
    [
        (LAUNCH_FAILED, KVM_ABORT, {}, "set LIBGUESTFS_BACKEND_SETTINGS=force_tcg"),
        (
            LAUNCH_FAILED,
            ["Could not access KVM kernel module: Permission denied"],
            {"LIBGUESTFS_BACKEND": "direct"},
            "set LIBGUESTFS_BACKEND_SETTINGS=force_tcg",
        ),
        (
            "supermin exited with error status 1",
            [
                "supermin: failed to find a suitable kernel: cannot read /boot/vmlinuz-6.1.0: "
                "Permission denied"
            ],
            TCG,
            "chmod 0644 /boot/vmlinuz-*",
        ),
        (
            "/usr/bin/supermin exited with error status 1.",
            ["supermin: ext2: copying files: No space left on device"],
            TCG,
            "building the appliance failed (supermin)",
        ),
        (
            "could not create appliance through libvirt.",
            ["libvirt: error: Cannot access storage file"],
            {},
            "set LIBGUESTFS_BACKEND=direct",
        ),
        (LAUNCH_FAILED, ["something odd"], TCG, "run 'libguestfs-test-tool'"),
    ],
)
def test_launch_error_names_the_fix(
    message: str, lines: list[str], env: dict[str, str], expected: str
) -> None:
    err = launch_error(message, lines, env)
    assert isinstance(err, GuestfsSetupError)
    assert expected in str(err)
    assert "\n" not in str(err)
    assert err.exit_code == 2


def test_kvm_abort_is_not_blamed_on_kvm_under_tcg() -> None:
    # With force_tcg already set, KVM is not the cause: the generic hint follows.
    err = launch_error(LAUNCH_FAILED, KVM_ABORT, TCG)
    assert "force_tcg (software" not in str(err)
    assert "libguestfs-test-tool" in str(err)


def test_swap_header_size() -> None:
    page = bytearray(65536)
    page[4086:4096] = b"SWAPSPACE2"
    assert swap_header_size(bytes(page)) == 4096
    big = bytearray(65536)
    big[65526:65536] = b"SWAPSPACE2"  # a 64 KiB page guest (ppc64)
    assert swap_header_size(bytes(big)) == 65536
    hibernated = bytearray(65536)
    hibernated[4086:4096] = b"S1SUSPEND\0"
    assert swap_header_size(bytes(hibernated)) is None
    assert swap_header_size(b"\0" * 100) is None


@pytest.mark.guestfs
def test_real_kvm_failure_becomes_one_line(guestfs_works: None, tmp_path: Path) -> None:
    """On this nested host qemu aborts with KVM; it takes a fraction of a second."""
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm: KVM would not even be tried")
    image = tmp_path / "d.raw"
    image.write_bytes(b"\0" * 1024 * 1024)
    script = (
        "from virtbackup.adapters.guestfs_ops import open_appliance, Drive\n"
        f"with open_appliance([Drive({str(image)!r}, 'raw')]):\n"
        "    print('launched')\n"
    )
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if "launched" in result.stdout:
        pytest.skip("KVM works on this host: nothing to translate")
    assert "GuestfsSetupError" in result.stderr
    assert "set LIBGUESTFS_BACKEND_SETTINGS=force_tcg" in result.stderr


def test_signals_wait_until_the_step_is_done() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("step finished")
    assert done == ["step finished"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_stop_signal_waits_until_the_step_is_done(signum: int) -> None:
    def stop(received: int, frame: object) -> None:
        raise Interrupted(f"interrupted by {signal.Signals(received).name}")

    previous = signal.signal(signum, stop)
    done = []
    try:
        with pytest.raises(Interrupted):
            with signals_deferred():
                os.kill(os.getpid(), signum)
                done.append("step finished")
    finally:
        signal.signal(signum, previous)
    assert done == ["step finished"]
