"""Bash scripts run as root in a throw-away VM: the only place LVM can be tested.

The host kernel has no device-mapper, so `NestedVM.run` boots the distro kernel with
virtme-ng (`vng`) under TCG (the host's KVM is unusable, see ENVIRONMENT.md). The guest
sees the host's own root file system read-only; only the `--rwdir` folders are shared
read-write, and everything else it writes lands in tmpfs and is gone after the run.
Every run is one boot (20-40 s), so tests should do as much as is reasonable per script.

Before the script, a prelude loads the loop and device-mapper modules and points LVM at
a private configuration, so scripts call `pvcreate`, `lvcreate -s`, `mount` plainly; with
`libvirtd=True` it also starts virtlogd and libvirtd on qemu:///system.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.kernel import BOOT, MODULES, newest_kernel, no_kernel_reason
from harness.real import unavailable

# LVM gets a configuration folder of its own: virtme-ng hides /etc/lvm behind an empty
# tmpfs (1.42) or leaves it read-only, and LVM writes metadata backups and archives there.
# It must not wait for udev: whether virtme-ng starts udevd depends on its version, and
# syncing with a udevd that misses an event can block LVM commands; without udev_sync
# LVM makes the /dev nodes itself. virtme-ng leaves fds open to its console ports, which
# LVM would warn about on every call. /mnt, read-only like all of /, becomes a tmpfs for
# mount points.
LVM_PRELUDE = r"""
modprobe -a loop dm-mod dm-snapshot
mount -t tmpfs nested-mnt /mnt
export LVM_SYSTEM_DIR=/run/nested-lvm LVM_SUPPRESS_FD_WARNINGS=1
mkdir -p "$LVM_SYSTEM_DIR" /run/lock
cat > "$LVM_SYSTEM_DIR/lvm.conf" <<'EOF'
activation {
    udev_sync = 0
    udev_rules = 0
}
devices {
    obtain_device_list_from_udev = 0
    # A devices file, if the defaults ever enable one, would not list the loop PVs.
    use_devicesfile = 0
}
EOF
"""

# Fresh tmpfs over libvirt's state and config folders: they are read-only or copies of
# the host's, whose defined domains and networks must not leak into the guest's libvirtd.
# qemu runs as root because the rwdirs lie under pytest's 0700 tmp folder, which the
# libvirt-qemu user cannot reach, and chmod through the shared folder would change the
# host's. remember_owner=0 keeps libvirt from writing its xattrs onto host files.
LIBVIRTD_PRELUDE = r"""
for dir in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /etc/libvirt/qemu
do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755 nested-libvirt "$dir"
done
mkdir -p /var/lib/libvirt/qemu /var/lib/libvirt/images /var/cache/libvirt/qemu
cat > /run/nested-qemu.conf <<'EOF'
user = "root"
group = "root"
remember_owner = 0
EOF
mount --bind /run/nested-qemu.conf /etc/libvirt/qemu.conf
virtlogd -d
libvirtd -d
# libvirtd takes 4-25 s on an idle host (the first connection probes qemu); a call that
# never returns must not hold the boot, so each one has a bound.
for _ in $(seq 60); do
    timeout 60 virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 1
done
timeout 60 virsh -c qemu:///system version >/dev/null
"""

# The script's exit status goes to a file: vng's own status cannot tell a failing script
# from a guest that never ran it. The prelude's chatter and a timestamped trace of its
# commands go to prelude.log, so the result carries only the script's output; a prelude
# failure leaves no status file. `progress` says how far a guest got (booted, script),
# so a run that never ends says whether the boot, the prelude or the script hung.
MAIN = r"""
cd "$NESTED_RUN"
exec 3>&1 4>&2 >prelude.log 2>&1
echo "booted $(date +%s)" > progress
PS4='+ $(date +%T) '
set -ex
trap 'echo "prelude failed: $BASH_COMMAND" >&2' ERR
{prelude}
trap - ERR
set +ex
echo "script $(date +%s)" >> progress
exec 1>&3 2>&4 3>&- 4>&-
export PATH={bindir}:"$PATH"
bash ./script.sh
echo $? > status
"""


class NestedVMError(Exception):
    """The guest did not run the script to its end: boot failure, prelude, or timeout."""


@dataclass(frozen=True)
class NestedVM:
    """Boots `kernel` with `vng` once per `run`; per-run folders live under `workdir`."""

    vng: Path
    kernel: Path
    workdir: Path
    # Room for libvirtd, a small qemu domain and virtbackup's buffers at the same time.
    memory: str = "2G"
    # Seconds a guest may take to boot and run the prelude: 20-60 s idle, a few minutes
    # on a loaded host (TCG). Past it, the boot is taken for hung and tried once more.
    boot_bound: float = 420

    def run(
        self,
        script: str,
        *,
        timeout: float = 600,  # a boot takes 20-60 s, libvirtd up to 120 s on a loaded host
        rwdirs: Sequence[Path] = (),
        libvirtd: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `script` with bash as root in a fresh guest and return its status and output.

        The script starts in its own empty folder, shared read-write (also as
        $NESTED_RUN), for scratch files such as loop-backed PVs; `rwdirs` shares more
        host folders read-write at the same paths. The test env's bin folder (with
        `virtbackup`) comes first on PATH.

        A guest that has not begun the script after `boot_bound` seconds is killed and
        booted once more (with a warning): under TCG a boot or libvirtd's start-up has
        been seen to hang for good, rarely, before any of the test ran. `timeout` bounds
        each boot, script included.
        """
        try:
            return self._boot(script, timeout, rwdirs, libvirtd)
        except _NoScript as first:
            warnings.warn(f"nested VM booted again: {first}", stacklevel=2)
            try:
                return self._boot(script, timeout, rwdirs, libvirtd)
            except _NoScript as second:
                raise NestedVMError(f"{second}\n(the boot before failed too:\n{first})") from None

    def _boot(
        self, script: str, timeout: float, rwdirs: Sequence[Path], libvirtd: bool
    ) -> subprocess.CompletedProcess[str]:
        rundir = Path(tempfile.mkdtemp(prefix="run-", dir=self.workdir))
        (rundir / "script.sh").write_text(script)
        prelude = LVM_PRELUDE + (LIBVIRTD_PRELUDE if libvirtd else "")
        bindir = Path(sys.executable).parent
        main = MAIN.format(prelude=prelude, bindir=shlex.quote(str(bindir)))
        (rundir / "main.sh").write_text(f"export NESTED_RUN={shlex.quote(str(rundir))}\n{main}")
        argv = [str(self.vng), "--disable-kvm", "-r", str(self.kernel), "-m", self.memory]
        for folder in (rundir, *rwdirs):
            argv += ["--rwdir", str(folder)]
        argv += ["--exec", f"bash {shlex.quote(str(rundir / 'main.sh'))}"]
        # vng starts virtme-run, which pip puts beside it, not necessarily on PATH.
        env = {**os.environ, "PATH": f"{self.vng.parent}{os.pathsep}{os.environ['PATH']}"}
        # Its own session, so a timeout can kill qemu too, not just the vng front end.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",  # a script may print binary data
            env=env,
            start_new_session=True,
        )
        started = time.monotonic()
        while True:
            try:
                # communicate may be called again after a timeout without losing output
                stdout, stderr = proc.communicate(timeout=5)
                break
            except subprocess.TimeoutExpired:
                waited = time.monotonic() - started
                began = _script_began(rundir)
                if waited < timeout and (began or waited < self.boot_bound):
                    continue
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                report = _guest_report(rundir, stdout, stderr)
                if not began:
                    raise _NoScript(f"no script after {waited:.0f} s: {argv}\n{report}") from None
                raise NestedVMError(f"no result after {timeout} s: {argv}\n{report}") from None
        if not (rundir / "status").exists():
            raise NestedVMError(
                f"vng exited {proc.returncode} before the script finished\n"
                + _guest_report(rundir, stdout, stderr)
            )
        returncode = int((rundir / "status").read_text())
        return subprocess.CompletedProcess(argv, returncode, stdout, stderr)


class _NoScript(NestedVMError):
    """The guest hung in its boot or prelude: nothing of the script ran."""


def _script_began(rundir: Path) -> bool:
    progress = rundir / "progress"
    return progress.exists() and "script" in progress.read_text()


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:]) + "\n"


def _guest_report(rundir: Path, stdout: str, stderr: str) -> str:
    """How far a guest got and the end of what it printed, for a run that failed."""

    def file(name: str) -> str:
        path = rundir / name
        return _tail(path.read_text(errors="replace")) if path.exists() else "(none)\n"

    return (
        f"--- progress\n{file('progress')}--- prelude.log\n{file('prelude.log')}"
        f"--- stdout\n{_tail(stdout)}--- stderr\n{_tail(stderr)}"
    )


def find_vng() -> Path | None:
    found = shutil.which("vng")
    if found:
        return Path(found)
    # tox runs the interpreter of its env without activating it, so bin/ is not on PATH.
    beside = Path(sys.executable).parent / "vng"
    return beside if beside.exists() else None


def newest_kernel_image(boot: Path = BOOT, modules: Path = MODULES) -> Path | None:
    """The image of the newest kernel that has its modules (loop, dm-snapshot) too."""
    version = newest_kernel(boot, modules)
    return None if version is None else boot / f"vmlinuz-{version}"


@pytest.fixture(scope="session")
def nested_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NestedVM]:
    vng = find_vng()
    if vng is None:
        unavailable("nested VM", "vng not found (pip install virtme-ng)")
    kernel = newest_kernel_image()
    if kernel is None:
        unavailable("nested VM", no_kernel_reason())
    workdir = tmp_path_factory.mktemp("nested")
    vm = NestedVM(vng, kernel, workdir)
    # No probe boot up front: each boot costs 20-50 s under TCG. A host that cannot
    # boot the guest makes the first test fail with NestedVMError, which says why.
    yield vm
    shutil.rmtree(workdir, ignore_errors=True)
