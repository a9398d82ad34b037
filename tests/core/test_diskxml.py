"""Disks from domain XML, without libvirt."""

import pytest

from virtbackup.core.diskxml import DiskXmlError, parse_disks


def domain(devices: str) -> str:
    return f"<domain type='qemu'><name>d</name><devices>{devices}</devices></domain>"


LIVE_CHAIN = """
<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source file='/img/top.qcow2' index='3'/>
  <backingStore type='file' index='2'>
    <format type='qcow2'/>
    <source file='/img/mid.qcow2'/>
    <backingStore type='block' index='1'>
      <format type='raw'/>
      <source dev='/dev/vg/base'/>
      <backingStore/>
    </backingStore>
  </backingStore>
  <target dev='vda' bus='virtio'/>
</disk>"""


def test_file_disk_with_a_live_backing_chain() -> None:
    [disk] = parse_disks(domain(LIVE_CHAIN))
    assert (disk.target, disk.device, disk.source_type) == ("vda", "disk", "file")
    assert disk.path == "/img/top.qcow2"
    assert disk.format == "qcow2"
    assert disk.backing_chain == ("/img/mid.qcow2", "/dev/vg/base")
    assert not disk.readonly and not disk.shareable
    assert disk.virtual_size is None and disk.on_lv is None and disk.probe_error is None


def test_empty_backing_store_ends_the_chain() -> None:
    xml = """<disk type='block' device='disk'><driver name='qemu' type='raw'/>
      <source dev='/dev/loop3' index='1'/><backingStore/><target dev='vdb'/></disk>"""
    [disk] = parse_disks(domain(xml))
    assert (disk.source_type, disk.path, disk.backing_chain) == ("block", "/dev/loop3", ())


def test_volume_disk_names_its_pool_and_volume() -> None:
    xml = """<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
      <source pool='default' volume='web 1.qcow2'/><target dev='vdc' bus='virtio'/></disk>"""
    [disk] = parse_disks(domain(xml))
    assert disk.source_type == "volume"
    assert disk.path is None  # resolved by discovery through libvirt
    assert (disk.pool, disk.volume) == ("default", "web 1.qcow2")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "<source protocol='nbd' name='export'><host name='192.0.2.1' port='10809'/></source>",
            "nbd://192.0.2.1:10809/export",
        ),
        (
            "<source protocol='iscsi' name='iqn.2024-01.org.example:t/1'>"
            "<host name='san.example'/></source>",
            "iscsi://san.example/iqn.2024-01.org.example:t/1",
        ),
        (
            "<source protocol='nbd'><host transport='unix' socket='/run/nbd.sock'/></source>",
            "nbd://unix:/run/nbd.sock",
        ),
        ("<source protocol='rbd' name='pool/image'/>", "rbd:///pool/image"),
    ],
)
def test_network_disk_location(source: str, expected: str) -> None:
    xml = f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>{source}<target dev='vdd'/></disk>"  # noqa: E501
    [disk] = parse_disks(domain(xml))
    assert disk.source_type == "network"
    assert disk.path is None
    assert disk.network == expected


def test_cdrom_without_medium_floppy_and_lun() -> None:
    xml = """
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/><readonly/></disk>
    <disk type='file' device='floppy'><source file='/img/boot.img'/><target dev='fda'/></disk>
    <disk type='block' device='lun'><driver name='qemu' type='raw'/>
      <source dev='/dev/sdz'/><target dev='sda' bus='scsi'/></disk>"""
    cdrom, floppy, lun = parse_disks(domain(xml))
    assert (cdrom.device, cdrom.path, cdrom.readonly, cdrom.format) == ("cdrom", None, True, "raw")
    assert (floppy.device, floppy.path, floppy.format) == ("floppy", "/img/boot.img", None)
    assert (lun.device, lun.source_type, lun.path) == ("lun", "block", "/dev/sdz")


def test_readonly_shareable_and_unicode_paths() -> None:
    xml = """<disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/Daten spaß/é.raw'/><target dev='vde'/>
      <shareable/></disk>
      <disk type='file' device='disk'><source file='/img/ro.raw'/><target dev='vdf'/>
      <readonly/></disk>"""
    shared, readonly = parse_disks(domain(xml))
    assert shared.path == "/var/lib/libvirt/images/Daten spaß/é.raw"
    assert shared.shareable and not shared.readonly
    assert readonly.readonly and not readonly.shareable


def test_other_source_types_have_no_path() -> None:
    xml = """<disk type='nvme' device='disk'><driver name='qemu' type='raw'/>
      <source type='pci' managed='yes' namespace='1'/><target dev='vdg'/></disk>
      <disk type='dir' device='disk'><source dir='/srv/fat'/><target dev='vdh'/></disk>"""
    nvme, directory = parse_disks(domain(xml))
    assert (nvme.source_type, nvme.path) == ("nvme", None)
    assert (directory.source_type, directory.path) == ("dir", "/srv/fat")


def test_no_disks() -> None:
    assert parse_disks(domain("<interface type='network'/>")) == []
    assert parse_disks("<domain type='qemu'><name>d</name></domain>") == []


def test_broken_xml_is_one_clear_error() -> None:
    with pytest.raises(DiskXmlError, match="cannot parse the domain XML"):
        parse_disks("<domain><devices>")
