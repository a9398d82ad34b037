"""The tiny real guest: the host's distro kernel and a busybox initramfs running qemu-ga.

Tests that need a guest which really runs (ACPI shutdown, agent shutdown, fsfreeze,
fstrim, data written inside) boot this one under TCG in a few seconds. Nothing is
downloaded: the kernel is /boot/vmlinuz-<version> (unpacked to its ELF vmlinux, which qemu
boots by PVH), the initramfs is made here from busybox-static, qemu-ga with the libraries
ldd lists, and the kernel modules the guest needs. It is built once per kernel and
builder inputs, cached in CACHE_ROOT/guest-<key>/.

Inside, /init (busybox sh, PID 1) loads the modules, mounts the ext4 data disk /dev/vda
at /mnt/data, starts busybox acpid (power button -> clean power-off) and qemu-ga on the
agent's virtio-serial port, then prints READY_LINE on the serial console (a file in the
test's workdir). The data disk gets its filesystem on the host (`make_data_disk`, or an
image a test brings): the guest never runs mkfs, so what it mounts is what the test made.

    def test_something(tiny_guest):
        guest = tiny_guest(fmt="qcow2", discard=True)  # running, agent answering
        code, out = guest.exec("echo hi > /mnt/data/f && sync")
        guest.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
        guest.wait_state(libvirt.VIR_DOMAIN_SHUTOFF)
        raw = disk_as_raw(guest.disk, guest.disk_format, guest.disk.parent)
        assert read_file_from_disk(raw, "/f") == b"hi\n"
        assert fs_is_clean(raw)[0]
"""

import base64
import gzip
import hashlib
import json
import lzma
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest

from harness.kernel import newest_kernel, no_kernel_reason
from harness.libvirtd import DomainFactory
from harness.real import unavailable

# Readable by all down to the files: qemu runs as libvirt-qemu and reads kernel and initrd.
CACHE_ROOT = Path("/var/cache/virtbackup-tests")
BUSYBOX = Path("/bin/busybox")
QEMU_GA = Path("/usr/sbin/qemu-ga")
MiB = 1024 * 1024

READY_LINE = "virtbackup-guest: ready"
AGENT_PORT = "org.qemu.guest_agent.0"
GUEST_MOUNT = "/mnt/data"

# `quiet` matters most: every kernel line on the emulated 8250 costs time under TCG.
# panic=-1 reboots at once instead of hanging if /init dies.
CMDLINE = "console=ttyS0 quiet panic=-1 8250.nr_uarts=1 tsc=reliable no_timer_check"

# Loaded in this order, each after its modules.dep dependencies. ext4 and jbd2 checksum
# with the crypto "crc32c", which the kernel would ask a /sbin/modprobe for; there is none
# and crc32c-intel needs SSE4.2, which the TCG CPU lacks, so crc32c_generic goes in by
# hand. evdev gives acpid the power button's /dev/input/event*.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "crc32c_generic",
    "ext4",
    "evdev",
    "button",
)

INIT = r"""#!/bin/busybox sh
# PID 1 of the tiny test guest. Any failure is printed on the serial console.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/qga /mnt/data /dev/virtio-ports

while read -r module; do
    insmod "/lib/modules/$module.ko" || echo "virtbackup-guest: insmod $module failed"
done < /etc/modules

# devtmpfs creates nodes asynchronously, and the port name arrives from the host later.
wait_for() {
    i=0
    while ! "$@"; do
        i=$((i + 1))
        [ $i -gt 100 ] && return 1
        usleep 100000
    done
}

agent_port() {
    for port in /sys/class/virtio-ports/*; do
        if [ "$(cat "$port/name" 2>/dev/null)" = "AGENT_PORT" ]; then
            echo "/dev/${port##*/}"
            return 0
        fi
    done
    return 1
}

# No discard mount option: deleted blocks must only be released by fstrim, so tests can
# tell guest-fstrim did it.
if wait_for test -b /dev/vda; then
    mount -t ext4 /dev/vda /mnt/data || echo "virtbackup-guest: mount /dev/vda failed"
else
    echo "virtbackup-guest: no /dev/vda"
fi

# acpid exits at once, silently, when it cannot open its log (/var/log/acpid.log).
acpid -c /etc/acpi -l /run/acpid.log || echo "virtbackup-guest: acpid failed"

if wait_for agent_port >/dev/null; then
    port=$(agent_port)
    ln -s "$port" /dev/virtio-ports/AGENT_PORT
    # Respawned so a crash shows up on the console instead of as a silent timeout.
    (while :; do
        qemu-ga -m virtio-serial -p "$port" -t /run/qga
        echo "virtbackup-guest: qemu-ga exited with $?"
        sleep 1
    done) &
else
    echo "virtbackup-guest: no agent port"
fi

echo "READY_LINE"
while :; do sleep 3600; done
""".replace("AGENT_PORT", AGENT_PORT).replace("READY_LINE", READY_LINE)

# Both ways to stop the guest end here: unmount the data fs cleanly, then power off
# at once (busybox's `poweroff -f` calls reboot(2) directly; there is no init to ask).
GUEST_POWEROFF = r"""#!/bin/sh
# qemu-ga starts us with stdout on /dev/null; the console log is where tests look.
exec >/dev/console 2>&1
echo "virtbackup-guest: powering off"
sync
umount /mnt/data || mount -o remount,ro /mnt/data || echo "virtbackup-guest: data fs busy"
sync
poweroff -f
"""

# qemu-ga's guest-shutdown runs `/sbin/shutdown -h -P +0 "hypervisor initiated shutdown"`.
SHUTDOWN = r"""#!/bin/sh
case " $* " in
    *" -r "*) sync; umount /mnt/data; reboot -f ;;
esac
exec /sbin/guest-poweroff
"""


class GuestUnavailable(Exception):
    """A host piece the tiny guest is built from is missing."""


@dataclass(frozen=True)
class GuestBoot:
    """What a domain's <os> needs to boot the tiny guest."""

    kernel: Path
    initrd: Path
    cmdline: str
    kernel_version: str


# -- building the initramfs ------------------------------------------------------------


def newest_kernel_version() -> str:
    version = newest_kernel()
    if version is None:
        raise GuestUnavailable(no_kernel_reason())
    return version


def module_name(path: str) -> str:
    """kernel/drivers/block/virtio_blk.ko.xz -> virtio_blk"""
    return re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", Path(path).name).replace("-", "_")


def module_load_order(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The module files of `wanted` and their dependencies, each after what it needs.

    A wanted module that this kernel has built in (modules.builtin) needs no loading:
    which drivers are modules differs between kernel versions."""
    builtin_list = moddir / "modules.builtin"
    builtin = set()
    if builtin_list.exists():
        builtin = {module_name(line) for line in builtin_list.read_text().split()}
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
        by_name[module_name(module)] = module
    order: list[str] = []

    def visit(module: str) -> None:
        if module not in order:
            for dep in deps[module]:
                visit(dep)
            order.append(module)

    for name in wanted:
        if name not in by_name and name in builtin:
            continue
        if name not in by_name:
            raise GuestUnavailable(f"kernel module {name} not in {moddir}/modules.dep")
        visit(by_name[name])
    return [moddir / module for module in order]


def module_bytes(path: Path) -> bytes:
    """The module uncompressed: busybox insmod wants a plain ELF file."""
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` lists for `binary`, the dynamic loader included."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)"
    return [Path(p) for p in re.findall(r"(?:=>\s*|^\s*)(/\S+)\s+\(0x", out, re.MULTILINE)]


def busybox_applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True)
    return out.stdout.split()


class Cpio:
    """A cpio archive in the kernel's "newc" format, built in memory.

    Every entry has uid, gid and mtime 0, so the same inputs give the same bytes. Parent
    directories are added on demand.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._dirs: set[str] = set()

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        parent = str(Path(name).parent)
        if parent != "." and parent not in self._dirs:
            self.dir(parent)
        encoded = name.encode() + b"\0"
        # ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        # rdevminor, namesize, check
        fields = [len(self._parts) + 1, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        name_part = header + encoded + _pad(len(header) + len(encoded))
        self._parts.append(name_part + data + _pad(len(data)))

    def dir(self, name: str) -> None:
        self._add(name, 0o040755)
        self._dirs.add(name)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._add(name, 0o020600, rdev=(major, minor))

    def getvalue(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return b"".join(self._parts)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def build_initramfs(kernel_version: str) -> bytes:
    archive = Cpio()
    for name in ("dev", "proc", "sys", "run", "tmp", "mnt", "var"):
        archive.dir(name)
    archive.symlink("var/run", "/run")
    # The kernel opens /dev/console for /init before devtmpfs is mounted over /dev.
    archive.char_device("dev/console", 5, 1)

    archive.file("init", INIT.encode(), 0o755)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in busybox_applets():
        if applet not in ("busybox", "init"):
            archive.symlink(f"bin/{applet}", "busybox")
    archive.file("sbin/guest-poweroff", GUEST_POWEROFF.encode(), 0o755)
    archive.file("sbin/shutdown", SHUTDOWN.encode(), 0o755)
    # busybox acpid's built-in table maps the power button (KEY_POWER) to the action
    # "PWRF/00000080", a path under its -c directory.
    archive.file("etc/acpi/PWRF/00000080", b"#!/bin/sh\nexec /sbin/guest-poweroff\n", 0o755)

    archive.file("sbin/qemu-ga", QEMU_GA.read_bytes(), 0o755)
    for lib in shared_libraries(QEMU_GA):
        archive.file(str(lib).lstrip("/"), lib.resolve().read_bytes(), 0o755)

    modules = module_load_order(Path("/lib/modules") / kernel_version, GUEST_MODULES)
    for module in modules:
        archive.file(f"lib/modules/{module_name(module.name)}.ko", module_bytes(module))
    archive.file("etc/modules", "".join(module_name(m.name) + "\n" for m in modules).encode())
    return archive.getvalue()


# Where a bzImage's compressed payload starts, and how to unpack it.
PAYLOAD_FORMATS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\xfd7zXZ\x00", lambda data: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)),
    (b"\x1f\x8b\x08", lambda data: zlib.decompressobj(wbits=31).decompress(data)),
    (b"\x28\xb5\x2f\xfd", lambda data: _run_filter(["zstd", "-dcq"], data)),
)


def _run_filter(argv: list[str], data: bytes) -> bytes:
    # zstd complains about the bzImage's trailing bytes after the frame but has written it.
    return subprocess.run(argv, input=data, check=False, capture_output=True).stdout


def uncompressed_kernel(kernel_version: str) -> bytes | None:
    """The ELF vmlinux inside /boot/vmlinuz-<version>, if the kernel boots it by PVH.

    qemu starts such an ELF at its PVH entry point: no self-decompression of the kernel
    under TCG, which halves the boot (about 4 s instead of 7 s to a ready agent here).
    """
    config = Path(f"/boot/config-{kernel_version}")
    if not config.exists() or "CONFIG_PVH=y" not in config.read_text().splitlines():
        return None
    bzimage = Path(f"/boot/vmlinuz-{kernel_version}").read_bytes()
    for magic, unpack in PAYLOAD_FORMATS:
        start = bzimage.find(magic)
        if start < 0:
            continue
        try:
            vmlinux = unpack(bzimage[start:])
        except (lzma.LZMAError, zlib.error, OSError):
            continue
        if vmlinux.startswith(b"\x7fELF"):
            return vmlinux
    return None


def builder_key(kernel_version: str) -> str:
    """Changes whenever an input of the build does: this file (scripts, module list,
    cmdline, the builder itself), the kernel, busybox or qemu-ga."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for binary in (BUSYBOX, QEMU_GA, Path(f"/boot/vmlinuz-{kernel_version}")):
        stat = binary.stat()
        digest.update(f"{binary}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{kernel_version}-{digest.hexdigest()[:12]}"


def build_guest_boot(cache_root: Path = CACHE_ROOT, kernel_version: str | None = None) -> GuestBoot:
    """The cached kernel and initramfs of the tiny guest, built first if needed."""
    for need, package in ((BUSYBOX, "busybox-static"), (QEMU_GA, "qemu-guest-agent")):
        if not need.exists():
            raise GuestUnavailable(f"no {need} (install {package})")
    version = kernel_version or newest_kernel_version()
    if not Path(f"/lib/modules/{version}/modules.dep").exists():
        raise GuestUnavailable(f"no /lib/modules/{version}/modules.dep")
    target = cache_root / f"guest-{builder_key(version)}"
    boot = GuestBoot(target / "kernel", target / "initrd.cpio", CMDLINE, version)
    if target.is_dir():
        return boot
    cache_root.mkdir(parents=True, exist_ok=True)
    cache_root.chmod(0o755)
    # Built aside and renamed: a concurrent session sees nothing or the whole thing.
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root))
    try:
        vmlinux = uncompressed_kernel(version)
        if vmlinux is None:
            shutil.copyfile(f"/boot/vmlinuz-{version}", staging / "kernel")
        else:
            (staging / "kernel").write_bytes(vmlinux)
        # Uncompressed: the kernel always unpacks that, and gunzip is slow under TCG.
        (staging / "initrd.cpio").write_bytes(build_initramfs(version))
        for path in (staging / "kernel", staging / "initrd.cpio"):
            path.chmod(0o644)
        staging.chmod(0o755)
        staging.rename(target)
        remove_stale_builds(cache_root, keep=target)
    except OSError:
        if not target.is_dir():  # else another session won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return boot


def remove_stale_builds(cache_root: Path, keep: Path, max_age: float = 86400) -> None:
    """Drop builds of other inputs a day old: no session that could boot them is left."""
    for old in cache_root.glob("guest-*"):
        if old != keep and time.time() - old.stat().st_mtime > max_age:
            shutil.rmtree(old, ignore_errors=True)


# -- the data disk, on the host --------------------------------------------------------


def make_data_disk(path: Path, fmt: str = "qcow2", size: int = 64 * MiB) -> Path:
    """A sparse image holding an empty ext4 filesystem (no partition table)."""
    raw = path if fmt == "raw" else path.with_suffix(".mkfs.raw")
    with open(raw, "wb") as f:
        f.truncate(size)
    # Inode tables and journal initialised now: else the guest's ext4lazyinit thread
    # writes them in the background and moves st_blocks while tests measure it.
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", "data", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    subprocess.run([*mkfs, str(raw)], check=True)
    if fmt != "raw":
        convert = ["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(path)]
        subprocess.run(convert, check=True)
        raw.unlink()
    return path


def disk_as_raw(disk: Path, fmt: str, scratch: Path) -> Path:
    """`disk` itself if raw, else a raw copy in `scratch`: e2fsprogs read only raw."""
    if fmt == "raw":
        return disk
    raw = scratch / f"{disk.name}.raw"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(disk), str(raw)], check=True)
    return raw


def read_file_from_disk(raw_image: Path, path: str) -> bytes:
    """A file's bytes out of the ext4 filesystem in a raw image (the guest must be off)."""
    out = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(raw_image)], check=True, capture_output=True
    )
    # debugfs reports a missing file on stderr and still exits 0.
    if b"File not found" in out.stderr:
        raise FileNotFoundError(path)
    return out.stdout


def fs_is_clean(raw_image: Path) -> tuple[bool, str]:
    """Whether the ext4 filesystem was unmounted cleanly and checks without errors.

    `e2fsck -n` alone is not enough: it skips a journal that needs recovery (the mark of a
    filesystem that was never unmounted) and still exits 0.
    """
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(raw_image)], check=False, capture_output=True, text=True
    )
    header = subprocess.run(
        ["dumpe2fs", "-h", str(raw_image)], check=False, capture_output=True, text=True
    )
    clean = (
        fsck.returncode == 0
        and "needs_recovery" not in header.stdout
        and re.search(r"^Filesystem state:\s+clean$", header.stdout, re.MULTILINE) is not None
    )
    return clean, fsck.stdout + fsck.stderr + header.stdout


# -- the domain ------------------------------------------------------------------------


def guest_xml(
    name: str,
    boot: GuestBoot,
    disk: Path,
    fmt: str,
    discard: bool,
    console_log: Path,
    memory_mib: int = 256,
) -> str:
    discard_attr = " discard='unmap'" if discard else ""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(boot.kernel))}</kernel>
    <initrd>{escape(str(boot.initrd))}</initrd>
    <cmdline>{escape(boot.cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'{discard_attr}/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'><target type='virtio' name='{AGENT_PORT}'/></channel>
    <serial type='file'><source path={quoteattr(str(console_log))}/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


@dataclass
class TinyGuest:
    """A tiny guest domain and the ways tests talk to it."""

    dom: Any  # libvirt.virDomain
    disk: Path
    disk_format: str
    console_log: Path
    libvirt: Any  # the libvirt module: its constants and libvirtError

    def agent(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: int = 30
    ) -> Any:
        """Send one guest-agent command; returns its "return" value. The agent answers at
        once when idle; under TCG on a loaded host its reply can take seconds."""
        import libvirt_qemu

        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        reply = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(request), timeout, 0)
        return json.loads(reply)["return"]

    def wait_agent(self, timeout: float = 120) -> None:
        """Until qemu-ga answers guest-ping; libvirt fails fast while it is not connected."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.agent("guest-ping", timeout=2)
                return
            except self.libvirt.libvirtError as err:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"guest agent silent after {timeout}s: {err}\nconsole:\n{self.console()}"
                    ) from err
            time.sleep(0.3)

    def exec(self, cmd: str, timeout: float = 180) -> tuple[int, str]:
        """Run `cmd` with /bin/sh -c in the guest: (exit code, stdout then stderr)."""
        started = self.agent(
            "guest-exec", {"path": "/bin/sh", "arg": ["-c", cmd], "capture-output": True}
        )
        deadline = time.monotonic() + timeout
        while not (status := self.agent("guest-exec-status", {"pid": started["pid"]}))["exited"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest command still running after {timeout}s: {cmd}")
            time.sleep(0.1)
        output = b"".join(base64.b64decode(status.get(key, "")) for key in ("out-data", "err-data"))
        # A command killed by a signal has "signal" instead of "exitcode".
        code = status["exitcode"] if "exitcode" in status else 128 + status["signal"]
        return code, output.decode(errors="replace")

    def spawn(self, cmd: str) -> int:
        """Start `cmd` with /bin/sh -c in the guest without waiting; its guest pid."""
        return int(self.agent("guest-exec", {"path": "/bin/sh", "arg": ["-c", cmd]})["pid"])

    def wait_state(self, state: int, timeout: float = 180) -> None:
        """Until the domain is in `state` (a VIR_DOMAIN_* state constant)."""
        deadline = time.monotonic() + timeout
        while self.dom.state()[0] != state:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"domain state {self.dom.state()} after {timeout}s, wanted "
                    f"{state}\nconsole:\n{self.console()}"
                )
            time.sleep(0.2)

    def console(self) -> str:
        """What the guest printed on its serial console so far."""
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""


class TinyGuestFactory:
    """Boots tiny guests for one test; domain_factory removes domains and files after."""

    def __init__(self, domains: DomainFactory, boot: GuestBoot, libvirt: Any) -> None:
        self.domains = domains
        self.boot = boot
        self.libvirt = libvirt

    def __call__(
        self,
        fmt: str = "qcow2",
        *,
        discard: bool = True,
        size: int = 64 * MiB,
        image: Path | None = None,
        hint: str = "guest",
        agent_timeout: float = 120,
    ) -> TinyGuest:
        """A running guest whose agent answers. Its disk is a new empty ext4 image of
        `size`, or `image` (ext4 on the whole disk, format `fmt`) if given."""
        workdir = self.domains.workdir
        disk = image or make_data_disk(workdir / f"{hint}-data.{fmt}", fmt, size)
        console_log = workdir / f"{hint}-console.log"
        xml = guest_xml(self.domains.name(hint), self.boot, disk, fmt, discard, console_log)
        dom = self.domains.define(xml, start=True)
        guest = TinyGuest(dom, disk, fmt, console_log, self.libvirt)
        guest.wait_agent(agent_timeout)
        return guest


@pytest.fixture(scope="session")
def tiny_guest_boot() -> GuestBoot:
    try:
        return build_guest_boot()
    except GuestUnavailable as err:
        unavailable("tiny guest", str(err))


@pytest.fixture
def tiny_guest(
    domain_factory: DomainFactory, tiny_guest_boot: GuestBoot, libvirt: Any
) -> Iterator[TinyGuestFactory]:
    """Call it to boot a guest: `guest = tiny_guest("raw", discard=False)`."""
    yield TinyGuestFactory(domain_factory, tiny_guest_boot, libvirt)
