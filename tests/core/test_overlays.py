"""Overlay names, the snapshot XML and the disk rewrite of a domain definition."""

import xml.etree.ElementTree as ET
from pathlib import PurePath

from virtbackup.core.diskxml import parse_disks
from virtbackup.core.overlays import (
    overlay_path,
    rewrite_disk_source,
    snapshot_xml,
)


def test_overlay_names_carry_the_run() -> None:
    assert overlay_path("/img/a.qcow2", "vda", "UU", "R1", None) == PurePath(
        "/img/a.qcow2.virtbackup-R1.qcow2"
    )
    assert overlay_path("/dev/vg/lv", "vdb", "UU", "R1", PurePath("/ovl")) == PurePath(
        "/ovl/UU-vdb.virtbackup-R1.qcow2"
    )


def test_snapshot_xml_names_every_disk() -> None:
    root = ET.fromstring(snapshot_xml("vb-R1", {"vda": "/o/a.qcow2"}, ["vda", "vdb", "hdc"]))
    assert root.findtext("name") == "vb-R1"
    disks = {d.get("name"): d for d in root.iterfind("disks/disk")}
    assert disks["vda"].get("snapshot") == "external"
    assert disks["vda"].find("source").get("file") == "/o/a.qcow2"  # type: ignore[union-attr]
    assert disks["vda"].find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disks["vdb"].get("snapshot") == "no" and disks["hdc"].get("snapshot") == "no"


DOMAIN = """<domain type='qemu'><name>d</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='/img/a.qcow2.virtbackup-R.qcow2'/>
    <backingStore type='file'><format type='raw'/><source file='/img/a.raw'/></backingStore>
    <target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='/o/UU-vdb.virtbackup-R.qcow2'/><target dev='vdb' bus='virtio'/></disk>
  <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
  </channel>
</devices></domain>"""


def test_rewrite_points_a_disk_back_to_its_original() -> None:
    xml = rewrite_disk_source(DOMAIN, "vda", "file", "/img/a.raw", "raw")
    assert xml is not None
    xml = rewrite_disk_source(xml, "vdb", "block", "/dev/vg/lv", "raw")
    assert xml is not None
    disks = parse_disks(xml)
    assert [(d.target, d.source_type, d.path, d.format, d.backing_chain) for d in disks] == [
        ("vda", "file", "/img/a.raw", "raw", ()),
        ("vdb", "block", "/dev/vg/lv", "raw", ()),
    ]
    assert rewrite_disk_source(DOMAIN, "vdz", "file", "/x", "raw") is None
