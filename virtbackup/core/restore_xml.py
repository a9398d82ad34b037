"""Turn a backed-up domain XML into the XML of a new domain using the restored disks.

Pure: text in, text out. The new domain gets a new name, no uuid and no MAC addresses
(libvirt generates both, so the copy can run beside the original), no NVRAM path (libvirt
makes one for the new name) and its backed-up disks point at the restored files.
"""

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass


class RestoreXmlError(ValueError):
    """The text is not a domain XML this function can transform."""


@dataclass(frozen=True)
class RestoredDisk:
    path: str  # the restored image file
    format: str  # raw, qcow2, ... (the driver type)


def domain_xml_for_restore(xml: str, new_name: str, disks: Mapping[str, RestoredDisk]) -> str:
    """`disks` maps a disk target (vda) to its restored file; other disks stay as they are."""
    try:
        domain = ET.fromstring(xml)
    except ET.ParseError as err:
        raise RestoreXmlError(f"it is not valid XML ({err})") from None
    if domain.tag != "domain":
        raise RestoreXmlError(f"its root element is <{domain.tag}>, not <domain>")
    domain.attrib.pop("id", None)  # present in live XML only
    _set_name(domain, new_name)
    for uuid in domain.findall("uuid"):
        domain.remove(uuid)
    for os_element in domain.findall("os"):
        for nvram in os_element.findall("nvram"):
            os_element.remove(nvram)
    for interface in domain.findall("devices/interface"):
        for mac in interface.findall("mac"):
            interface.remove(mac)
    found = set()
    for disk in domain.findall("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev is None or dev not in disks:
            continue
        _point_disk_at(disk, disks[dev])
        found.add(dev)
    missing = sorted(set(disks) - found)
    if missing:
        raise RestoreXmlError(f"it has no disk with target {', '.join(missing)}")
    return ET.tostring(domain, encoding="unicode") + "\n"


def _set_name(domain: ET.Element, new_name: str) -> None:
    name = domain.find("name")
    if name is None:
        name = ET.Element("name")
        domain.insert(0, name)
    name.text = new_name


def _point_disk_at(disk: ET.Element, restored: RestoredDisk) -> None:
    # A restored disk is always a plain file, whatever it was (block device, volume).
    disk.set("type", "file")
    for child in list(disk):
        if child.tag in ("source", "backingStore"):
            disk.remove(child)
    driver = disk.find("driver")
    if driver is None:
        driver = ET.SubElement(disk, "driver", {"name": "qemu"})
    driver.set("type", restored.format)
    source = ET.Element("source", {"file": restored.path})
    disk.insert(list(disk).index(driver) + 1, source)
