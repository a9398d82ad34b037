"""adapters/guestfs_ops and guestfs_launch: launch errors and hangs as one line with the
fix; swap headers."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness.guestfs import ABORT, HANG, KVM_ABORT, fake_qemu, processes_running

from virtbackup.adapters.guestfs_launch import (
    DEFAULT_LAUNCH_TIMEOUT,
    GuestfsSetupError,
    child_processes,
    launch_error,
    launch_timeout_error,
)
from virtbackup.adapters.guestfs_ops import (
    Drive,
    open_appliance,
    signals_deferred,
    swap_header_size,
)
from virtbackup.core.errors import Interrupted

LAUNCH_FAILED = (
    "guestfs_launch failed.\nThis usually means the libguestfs appliance failed to start "
    "or crashed.\nDo:\n  export LIBGUESTFS_DEBUG=1 LIBGUESTFS_TRACE=1\nand run the command again."
)
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


def test_launch_timeout_names_the_cause_and_the_fix() -> None:
    err = launch_timeout_error(20, {})
    assert "did not start within 20 s" in str(err)
    assert "force_tcg" in str(err) and "libguestfs-test-tool" in str(err)
    under_tcg = launch_timeout_error(20, TCG)
    assert "raise appliance_timeout" in str(under_tcg) and "force_tcg" not in str(under_tcg)
    assert "\n" not in str(err) + str(under_tcg)
    assert err.exit_code == under_tcg.exit_code == 2


LAUNCH = """
import sys
from virtbackup.adapters.guestfs_ops import Drive, open_appliance
from virtbackup.core.errors import VirtbackupError
try:
    with open_appliance([Drive(sys.argv[1], "raw")], launch_timeout=float(sys.argv[2])):
        print("launched")
except VirtbackupError as err:
    print(type(err).__name__, err, file=sys.stderr)
    sys.exit(err.exit_code)
"""


def launch_in_child(
    tmp_path: Path, env: dict[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Launch on a 1 MiB image in a child process; its libguestfs scratch places are
    kept below `tmp_path` so that leftovers can be seen."""
    image = tmp_path / "d.raw"
    image.write_bytes(b"\0" * 1024 * 1024)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    child_env = dict(os.environ, LIBGUESTFS_TMPDIR=str(scratch), XDG_RUNTIME_DIR=str(scratch))
    child_env.update(env)
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH, str(image), str(timeout)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout + 240,
        check=False,
    )
    return result, scratch


@pytest.mark.guestfs
def test_injected_kvm_abort_becomes_one_line(guestfs_works: None, tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, ABORT)
    env = {"LIBGUESTFS_HV": str(qemu), "LIBGUESTFS_BACKEND": "direct"}
    env["LIBGUESTFS_BACKEND_SETTINGS"] = ""  # as on a host where nobody set force_tcg
    result, scratch = launch_in_child(tmp_path, env, 120)
    assert result.returncode == 2, result.stderr
    assert "launched" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("GuestfsSetupError the libguestfs appliance cannot start")
    assert "set LIBGUESTFS_BACKEND_SETTINGS=force_tcg" in line
    assert processes_running(qemu) == []
    assert list(scratch.iterdir()) == []


@pytest.mark.guestfs
def test_injected_hang_is_killed_after_the_timeout(guestfs_works: None, tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, HANG)
    env = {"LIBGUESTFS_HV": str(qemu), "LIBGUESTFS_BACKEND": "direct"}
    env["LIBGUESTFS_BACKEND_SETTINGS"] = ""
    result, scratch = launch_in_child(tmp_path, env, 8)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "the libguestfs appliance did not start within 8 s" in line
    assert "LIBGUESTFS_BACKEND_SETTINGS=force_tcg" in line
    assert processes_running(qemu) == []  # the fake and its sleep are gone
    assert list(scratch.iterdir()) == []


@pytest.mark.guestfs
def test_doctor_probe_is_bounded_too(guestfs_works: None, tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, HANG)
    probe = (
        "from virtbackup.adapters.host_probe import guestfs_appliance\n"
        "print(guestfs_appliance(5).error)\n"
    )
    env = dict(os.environ, LIBGUESTFS_HV=str(qemu))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "did not start within 5 s" in result.stdout
    assert "raise appliance_timeout" in result.stdout  # force_tcg is set: not KVM's fault
    assert processes_running(qemu) == []


@pytest.mark.guestfs
def test_real_launch_within_the_default_bound(guestfs_works: None, tmp_path: Path) -> None:
    image = tmp_path / "d.raw"
    image.write_bytes(b"\0" * 1024 * 1024)
    before = set(child_processes(os.getpid()))
    with open_appliance([Drive(str(image), "raw")], launch_timeout=DEFAULT_LAUNCH_TIMEOUT) as app:
        assert app.g.list_devices() == ["/dev/sda"]
    assert set(child_processes(os.getpid())) <= before  # qemu is gone with the handle


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
