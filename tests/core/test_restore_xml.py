import xml.etree.ElementTree as ET

import pytest

from virtbackup.core.restore_xml import RestoredDisk, RestoreXmlError, domain_xml_for_restore

LIVE_XML = """<domain type='qemu' id='7'>
  <name>web1</name>
  <uuid>6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11</uuid>
  <os>
    <type arch='x86_64'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg0/web1'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/data.qcow2'/>
      <backingStore type='file'><format type='raw'/><source file='/base.raw'/></backingStore>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:57'/>
      <source bridge='br0'/>
    </interface>
  </devices>
</domain>
"""

RESTORED = {
    "vda": RestoredDisk("/restore/vda.raw", "raw"),
    "vdb": RestoredDisk("/restore/vdb.qcow2", "qcow2"),
}


def _transform() -> ET.Element:
    return ET.fromstring(domain_xml_for_restore(LIVE_XML, "web1-copy", RESTORED))


def test_new_name_no_uuid_no_id_no_nvram() -> None:
    domain = _transform()
    assert domain.findtext("name") == "web1-copy"
    assert domain.find("uuid") is None
    assert "id" not in domain.attrib
    assert domain.find("os/nvram") is None
    assert domain.find("os/loader") is not None  # the firmware stays


def test_mac_addresses_dropped_interfaces_kept() -> None:
    domain = _transform()
    interfaces = domain.findall("devices/interface")
    assert len(interfaces) == 2
    assert domain.findall("devices/interface/mac") == []
    assert interfaces[1].find("source").get("bridge") == "br0"  # type: ignore[union-attr]


def test_disks_point_at_restored_files() -> None:
    disks = {d.find("target").get("dev"): d for d in _transform().findall("devices/disk")}  # type: ignore[union-attr]
    vda, vdb, cdrom = disks["vda"], disks["vdb"], disks["sda"]
    assert vda.get("type") == "file"
    assert vda.find("source").attrib == {"file": "/restore/vda.raw"}  # type: ignore[union-attr]
    assert vda.find("driver").get("cache") == "none"  # type: ignore[union-attr]
    assert vdb.find("source").get("file") == "/restore/vdb.qcow2"  # type: ignore[union-attr]
    assert vdb.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert vdb.find("backingStore") is None
    assert cdrom.find("source").get("file") == "/iso/debian.iso"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("xml", "disks", "message"),
    [
        ("<domain", RESTORED, "not valid XML"),
        ("<network/>", RESTORED, "root element is <network>"),
        (LIVE_XML, {"vdz": RestoredDisk("/x", "raw")}, "no disk with target vdz"),
    ],
)
def test_bad_input(xml: str, disks: dict[str, RestoredDisk], message: str) -> None:
    with pytest.raises(RestoreXmlError, match=message):
        domain_xml_for_restore(xml, "copy", disks)
