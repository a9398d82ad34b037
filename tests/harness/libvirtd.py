"""A real libvirtd on qemu:///system, and throw-away domains that are always removed.

Domains are `type='qemu'` (TCG): on these hosts a `type='kvm'` guest never runs its code.
qemu runs as libvirt-qemu, so every file a domain uses lives in a per-test directory
under /var/lib/libvirt/images, which that user can reach (pytest's tmp_path cannot).
"""

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest

from harness.real import unavailable
from virtbackup.adapters.hypervisor.connection import Hypervisor

URI = "qemu:///system"
IMAGES_ROOT = Path("/var/lib/libvirt/images")
MiB = 1024 * 1024


def pytest_configure(config: pytest.Config) -> None:
    """The usual umask, whatever the caller's: qemu (libvirt-qemu) must traverse the
    folders and read the kernels the tests create, and with a stricter umask (077, 027 on
    hardened hosts) every `mkdir(mode=0o755)` would lock it out. virtbackup itself sets
    0600/0700 explicitly, which the tests check under this more permissive umask."""
    os.umask(0o022)


@pytest.fixture(scope="session")
def libvirt() -> Any:
    try:
        import libvirt
    except ImportError as err:
        unavailable("libvirt bindings", str(err))
    # libvirt prints every error to stderr by default; the exceptions carry them anyway.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


@pytest.fixture(scope="session")
def libvirt_conn(libvirt: Any) -> Iterator[Any]:
    try:
        conn = libvirt.open(URI)
        conn.getVersion()
    except libvirt.libvirtError as err:
        unavailable("libvirtd", f"{URI}: {err}")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def hypervisor(libvirt_conn: Any) -> Hypervisor:
    """virtbackup's own boundary over the suite's connection."""
    return Hypervisor(libvirt_conn)


@dataclass(frozen=True)
class DiskSpec:
    """One disk of a throw-away domain.

    kind: qcow2 | raw (sparse files), block (a loop device over a raw file), cdrom
    (a read-only raw file on IDE), empty-cdrom (no medium), chain (a qcow2 overlay on a
    raw backing file). `image` uses an existing file instead of a new blank one.
    """

    kind: str = "qcow2"
    size: int = 16 * MiB
    image: Path | None = None
    discard: bool = False


class DomainFactory:
    """Defines domains for one test and removes them, their files and loop devices after."""

    def __init__(self, conn: Any, libvirt: Any) -> None:
        self.conn = conn
        self.libvirt = libvirt
        self.tag = uuid.uuid4().hex[:8]
        self.workdir = IMAGES_ROOT / f"vbtest-{self.tag}"
        self.workdir.mkdir(mode=0o755)
        self._names: list[str] = []
        self._loops: list[str] = []

    def name(self, hint: str = "dom") -> str:
        return f"vbtest-{self.tag}-{hint}"

    # -- images and devices ------------------------------------------------------------

    def blank_image(self, filename: str, fmt: str, size: int, backing: Path | None = None) -> Path:
        path = self.workdir / filename
        argv = ["qemu-img", "create", "-q", "-f", fmt]
        if backing is not None:
            argv += ["-b", str(backing), "-F", "raw"]
        subprocess.run([*argv, str(path), str(size)], check=True)
        return path

    def loop_device(self, image: Path) -> str:
        dev = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        self._loops.append(dev)
        return dev

    # -- domains -----------------------------------------------------------------------

    def define(self, xml: str, *, start: bool = False, transient: bool = False) -> Any:
        """Define (or, transient, create) a domain from XML; it is removed after the test."""
        if transient:
            dom = self.conn.createXML(xml, 0)
            self._names.append(dom.name())
            return dom
        dom = self.conn.defineXML(xml)
        self._names.append(dom.name())
        if start:
            dom.create()
        return dom

    def create(
        self,
        disks: Sequence[DiskSpec] = (DiskSpec(),),
        *,
        hint: str = "dom",
        name: str | None = None,
        start: bool = False,
        transient: bool = False,
        memory_mib: int = 64,
        os_xml: str = "<type arch='x86_64' machine='pc'>hvm</type>",
        devices_xml: str = "",
    ) -> Any:
        """A `type='qemu'` domain with the given disks; without an OS it idles in the BIOS."""
        disk_xml = "".join(self._disk_xml(spec, index, hint) for index, spec in enumerate(disks))
        xml = f"""<domain type='qemu'>
  <name>{escape(name or self.name(hint))}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>{os_xml}</os>
  <features><acpi/></features>
  <devices>{disk_xml}{devices_xml}
    <serial type='pty'/>
  </devices>
</domain>"""
        return self.define(xml, start=start, transient=transient)

    def _disk_xml(self, spec: DiskSpec, index: int, hint: str) -> str:
        discard = " discard='unmap'" if spec.discard else ""
        if spec.kind == "empty-cdrom":
            return f"""
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <target dev='hd{"cd"[index % 2]}' bus='ide'/><readonly/></disk>"""
        if spec.kind == "cdrom":
            image = spec.image or self.blank_image(f"{hint}-cd{index}.iso", "raw", spec.size)
            return f"""
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file={quoteattr(str(image))}/><target dev='hd{"cd"[index % 2]}' bus='ide'/>
      <readonly/></disk>"""
        target = f"vd{chr(ord('a') + index)}"
        if spec.kind == "block":
            image = spec.image or self.blank_image(f"{hint}-disk{index}.raw", "raw", spec.size)
            dev = self.loop_device(image)
            return f"""
    <disk type='block' device='disk'><driver name='qemu' type='raw'{discard}/>
      <source dev={quoteattr(dev)}/><target dev='{target}' bus='virtio'/></disk>"""
        if spec.kind == "chain":
            base = self.blank_image(f"{hint}-disk{index}-base.raw", "raw", spec.size)
            image = spec.image or self.blank_image(
                f"{hint}-disk{index}.qcow2", "qcow2", spec.size, base
            )
            fmt = "qcow2"
        elif spec.kind in ("qcow2", "raw"):
            fmt = spec.kind
            image = spec.image or self.blank_image(f"{hint}-disk{index}.{fmt}", fmt, spec.size)
        else:
            raise ValueError(f"unknown disk kind {spec.kind!r}")
        return f"""
    <disk type='file' device='disk'><driver name='qemu' type='{fmt}'{discard}/>
      <source file={quoteattr(str(image))}/><target dev='{target}' bus='virtio'/></disk>"""

    def cleanup(self) -> None:
        try:
            for name in self._names:
                self._remove_domain(name)
        finally:
            for dev in self._loops:
                subprocess.run(["losetup", "--detach", dev], check=False)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _remove_domain(self, name: str) -> None:
        lv = self.libvirt
        try:
            dom = self.conn.lookupByName(name)
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()  # a transient domain is gone after this
            if persistent:
                dom.undefineFlags(
                    lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | lv.VIR_DOMAIN_UNDEFINE_NVRAM
                    | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                )
        except lv.libvirtError as err:
            if err.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                raise


@pytest.fixture
def domain_factory(libvirt_conn: Any, libvirt: Any) -> Iterator[DomainFactory]:
    factory = DomainFactory(libvirt_conn, libvirt)
    try:
        yield factory
    finally:
        factory.cleanup()
