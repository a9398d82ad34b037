"""Discovery against the real libvirtd: every disk kind, every domain state we can make."""

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor import discovery
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.planning import PlanOptions, UnknownDomain, plan_domain

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
NBD_DISK = """
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='nbd' name='export'><host name='192.0.2.1' port='10809'/></source>
      <target dev='vdx' bus='virtio'/></disk>"""


class DirPool:
    """A dir storage pool in the factory's work dir; defined, so it can be stopped."""

    def __init__(self, conn: Any, factory: DomainFactory) -> None:
        self.name = factory.name("pool")
        self.path = factory.workdir / "pool"
        self.path.mkdir()
        xml = f"""<pool type='dir'><name>{escape(self.name)}</name>
          <target><path>{escape(str(self.path))}</path></target></pool>"""
        self.pool = conn.storagePoolDefineXML(xml, 0)
        try:
            self.pool.create(0)
        except Exception:
            self.pool.undefine()
            raise

    def volume(self, name: str, fmt: str = "qcow2", size: int = 8 * MiB) -> str:
        xml = f"""<volume><name>{escape(name)}</name><capacity>{size}</capacity>
          <target><format type='{fmt}'/></target></volume>"""
        return str(self.pool.createXML(xml, 0).path())

    def disk_xml(self, volume: str, target: str, fmt: str = "qcow2") -> str:
        return f"""
    <disk type='volume' device='disk'><driver name='qemu' type='{fmt}'/>
      <source pool={quoteattr(self.name)} volume={quoteattr(volume)}/>
      <target dev='{target}' bus='virtio'/></disk>"""

    def remove(self) -> None:
        if self.pool.isActive():
            self.pool.destroy()
        self.pool.undefine()


@pytest.fixture
def dir_pool(libvirt_conn: Any, domain_factory: DomainFactory) -> Iterator[DirPool]:
    # Requested after domain_factory, so it is removed before the work dir goes.
    pool = DirPool(libvirt_conn, domain_factory)
    try:
        yield pool
    finally:
        pool.remove()


def facts_of(conn: Any, dom: Any) -> DomainFacts:
    [facts] = Hypervisor(conn).discover([dom.name()])
    return facts


def by_target(facts: DomainFacts) -> dict[str, DiskFacts]:
    return {disk.target: disk for disk in facts.disks}


ALL_LOCAL = [
    DiskSpec("qcow2"),
    DiskSpec("raw"),
    DiskSpec("block"),
    DiskSpec("cdrom"),
    DiskSpec("empty-cdrom"),
    DiskSpec("chain"),
]


def test_offline_domain_with_every_disk_kind(
    libvirt_conn: Any, domain_factory: DomainFactory, dir_pool: DirPool
) -> None:
    volume_path = dir_pool.volume("data 1.qcow2")
    devices = dir_pool.disk_xml("data 1.qcow2", "vdv") + NBD_DISK
    dom = domain_factory.create(ALL_LOCAL, hint="off", devices_xml=devices)
    facts = facts_of(libvirt_conn, dom)
    assert (facts.name, facts.uuid) == (dom.name(), dom.UUIDString())
    assert facts.state is DomainState.SHUTOFF and facts.persistent
    disks = by_target(facts)
    assert sorted(disks) == ["hdc", "hdd", "vda", "vdb", "vdc", "vdf", "vdv", "vdx"]

    qcow2, raw, block = disks["vda"], disks["vdb"], disks["vdc"]
    assert (qcow2.source_type, qcow2.format, qcow2.virtual_size) == ("file", "qcow2", 16 * MiB)
    assert qcow2.path is not None and qcow2.path.endswith("off-disk0.qcow2")
    assert qcow2.allocated is not None and 0 < qcow2.allocated < 2 * MiB
    assert (raw.format, raw.virtual_size, raw.physical) == ("raw", 16 * MiB, 16 * MiB)
    assert raw.allocated is not None and raw.allocated < MiB  # sparse
    assert block.source_type == "block" and block.path is not None
    assert block.path.startswith("/dev/loop")
    assert (block.virtual_size, block.allocated) == (16 * MiB, 16 * MiB)

    cdrom, empty = disks["hdd"], disks["hdc"]
    assert (cdrom.device, cdrom.readonly) == ("cdrom", True)
    assert cdrom.path is not None and cdrom.path.endswith(".iso")
    assert (empty.device, empty.path, empty.probe_error) == ("cdrom", None, None)

    chain = disks["vdf"]
    assert chain.format == "qcow2"
    assert chain.backing_chain == (str(domain_factory.workdir / "off-disk5-base.raw"),)

    volume = disks["vdv"]
    assert (volume.source_type, volume.pool, volume.volume) == (
        "volume",
        dir_pool.name,
        "data 1.qcow2",
    )
    assert volume.path == volume_path
    assert volume.virtual_size == 8 * MiB

    network = disks["vdx"]
    assert (network.source_type, network.path) == ("network", None)
    assert network.network == "nbd://192.0.2.1:10809/export"

    plan = plan_domain(facts)
    assert plan.method == "offline"
    backed_up = {d.disk.target: d.backup for d in plan.disks}
    assert backed_up == {
        "vda": True,
        "vdb": True,
        "vdc": True,
        "vdf": True,
        "vdv": True,
        "hdc": False,
        "hdd": False,
        "vdx": False,
    }


def test_running_domain_sizes_and_chain_from_the_live_xml(
    libvirt_conn: Any, domain_factory: DomainFactory, dir_pool: DirPool
) -> None:
    dir_pool.volume("v.qcow2")
    dom = domain_factory.create(
        ALL_LOCAL, hint="run", start=True, devices_xml=dir_pool.disk_xml("v.qcow2", "vdv")
    )
    facts = facts_of(libvirt_conn, dom)
    assert facts.state is DomainState.RUNNING
    disks = by_target(facts)
    for target in ("vda", "vdb", "vdc", "vdf", "vdv"):
        assert disks[target].virtual_size in (16 * MiB, 8 * MiB), target
        assert disks[target].allocated is not None, target
        assert disks[target].probe_error is None, target
    assert disks["vdc"].allocated == 16 * MiB  # a block device occupies all of it
    assert disks["vdf"].backing_chain == (str(domain_factory.workdir / "run-disk5-base.raw"),)
    assert disks["vdv"].path == str(dir_pool.path / "v.qcow2")
    assert plan_domain(facts).method == "snapshot"


def test_paused_domain_stays_paused(
    libvirt_conn: Any, libvirt: Any, domain_factory: DomainFactory
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], hint="paused", start=True)
    dom.suspend()
    facts = facts_of(libvirt_conn, dom)
    assert facts.state is DomainState.PAUSED
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED  # looking does not resume it
    plan = plan_domain(facts)
    assert plan.method == "snapshot" and "stays paused" in plan.reason


def test_transient_domain(libvirt_conn: Any, domain_factory: DomainFactory) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], hint="transient", transient=True)
    facts = facts_of(libvirt_conn, dom)
    assert (facts.state, facts.persistent) == (DomainState.RUNNING, False)
    assert facts.disks[0].virtual_size == 16 * MiB
    assert dom.name() in Hypervisor(libvirt_conn).domain_names()


def test_unreadable_sources_are_recorded_not_raised(
    libvirt_conn: Any, domain_factory: DomainFactory, dir_pool: DirPool
) -> None:
    missing = domain_factory.workdir / "gone.qcow2"
    devices = f"""
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file={quoteattr(str(missing))}/><target dev='vdm' bus='virtio'/></disk>
    <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
      <source pool='vbtest-no-such-pool' volume='x'/><target dev='vdn' bus='virtio'/></disk>
    {dir_pool.disk_xml("no-such-volume", "vdo")}"""
    dom = domain_factory.create([DiskSpec("qcow2")], hint="broken", devices_xml=devices)
    disks = by_target(facts_of(libvirt_conn, dom))
    assert disks["vda"].probe_error is None
    assert disks["vdm"].probe_error == f"cannot inspect {missing}: No such file or directory"
    assert (
        disks["vdn"].probe_error is not None and "vbtest-no-such-pool" in disks["vdn"].probe_error
    )
    assert disks["vdo"].probe_error is not None and "no-such-volume" in disks["vdo"].probe_error
    dir_pool.pool.destroy()
    assert by_target(facts_of(libvirt_conn, dom))["vdo"].probe_error == (
        f"storage pool {dir_pool.name!r} is not active"
    )


def test_names_and_paths_with_spaces_and_unicode(
    libvirt_conn: Any, domain_factory: DomainFactory
) -> None:
    name = f"vbtest-{domain_factory.tag} Größe ü 2"
    image = domain_factory.blank_image("Platte spaß é.qcow2", "qcow2", 4 * MiB)
    dom = domain_factory.create([DiskSpec("qcow2", image=image)], name=name)
    [facts] = Hypervisor(libvirt_conn).discover([name])
    assert facts.name == name == dom.name()
    assert facts.disks[0].path == str(image)
    assert facts.disks[0].virtual_size == 4 * MiB


def test_selection_by_glob_and_unknown_names(
    libvirt_conn: Any, domain_factory: DomainFactory
) -> None:
    first = domain_factory.create([DiskSpec("raw", size=MiB)], hint="alpha")
    second = domain_factory.create([DiskSpec("raw", size=MiB)], hint="beta")
    found = Hypervisor(libvirt_conn).discover(include=[f"vbtest-{domain_factory.tag}-*"])
    assert [f.name for f in found] == sorted([first.name(), second.name()])
    found = Hypervisor(libvirt_conn).discover(
        include=[f"vbtest-{domain_factory.tag}-*"], exclude=["*beta"]
    )
    assert [f.name for f in found] == [first.name()]
    with pytest.raises(UnknownDomain, match=f"did you mean '{first.name()}'"):
        Hypervisor(libvirt_conn).discover([first.name() + "x"])


def test_domain_facts_of_a_looked_up_domain(
    libvirt_conn: Any, domain_factory: DomainFactory
) -> None:
    dom = domain_factory.create([DiskSpec("raw", size=MiB)], hint="direct")
    hypervisor = Hypervisor(libvirt_conn)
    facts = hypervisor.facts(hypervisor.domain(dom.name()))
    assert facts.name == dom.name() and facts.disks[0].virtual_size == MiB
    assert facts.offers_backup_api  # libvirt 9 with qemu 7.2, as on every host of ours


class _OldDomainCapabilities:
    """A connection whose libvirt predates the backup API: its domain capabilities have
    no <backup/> element."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def getDomainCapabilities(self, *args: Any) -> str:  # noqa: N802 (libvirt's name)
        caps = str(self._conn.getDomainCapabilities(*args))
        return re.sub(r"<backup supported=[^>]*/>", "", caps)


def test_a_libvirt_without_the_backup_feature_offers_no_backup_api(
    libvirt_conn: Any, libvirt: Any, domain_factory: DomainFactory
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2", size=MiB)], hint="nocaps", start=True)
    assert discovery.domain_facts(libvirt, libvirt_conn, dom, local=True).offers_backup_api
    old = _OldDomainCapabilities(libvirt_conn)
    facts = discovery.domain_facts(libvirt, old, dom, local=True)
    assert not facts.offers_backup_api
    plan = plan_domain(facts, PlanOptions(method=Method.BACKUP_API))
    assert plan.method is None and "does not offer the backup API" in plan.reason


def test_loop_device_is_reported_as_block(domain_factory: DomainFactory, libvirt_conn: Any) -> None:
    dom = domain_factory.create([DiskSpec("block", size=2 * MiB)], hint="loop")
    [disk] = facts_of(libvirt_conn, dom).disks
    assert disk.path is not None
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    assert f"{disk.path}:" in attached.stdout
    assert Path(disk.path).is_block_device()


@pytest.mark.parametrize("running", [False, True], ids=["shut-off", "running"])
def test_images_keeping_data_in_other_files_are_found(
    libvirt_conn: Any, domain_factory: DomainFactory, running: bool
) -> None:
    work = domain_factory.workdir
    images = {"sparse.vmdk": "vmdk", "flat.vmdk": "vmdk", "old.qcow": "qcow"}
    for name, fmt in images.items():
        options = ["-o", "subformat=monolithicFlat"] if name == "flat.vmdk" else []
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", fmt, *options, str(work / name), "1M"], check=True
        )
    # libvirt labels the image it is given, not the extent the descriptor names.
    (work / "flat-flat.vmdk").chmod(0o666)
    devices = "".join(
        f"""
    <disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>
      <source file={quoteattr(str(work / name))}/><target dev='vd{"bcd"[i]}' bus='virtio'/>
    </disk>"""
        for i, (name, fmt) in enumerate(images.items())
    )
    dom = domain_factory.create(
        [DiskSpec("qcow2")], hint="elsewhere", devices_xml=devices, start=running
    )
    disks = by_target(facts_of(libvirt_conn, dom))
    assert (disks["vda"].data_elsewhere, disks["vdb"].data_elsewhere) == (None, None)
    assert disks["vdc"].data_elsewhere == (
        f"its vmdk image keeps its data in extent files ({work / 'flat-flat.vmdk'}): "
        "convert it to qcow2 or raw"
    )
    assert disks["vdd"].data_elsewhere == (
        "qcow images can keep data in other files, which is not checked: convert it to qcow2 or raw"
    )
    assert all(disks[t].probe_error is None for t in ("vda", "vdb", "vdc", "vdd"))
