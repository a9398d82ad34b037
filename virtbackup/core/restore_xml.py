"""Turn a backed-up domain XML into the XML of a new domain using the restored disks.

Pure: text in, text out. The new domain gets a new name, no uuid, a new generation id
and no MAC addresses (libvirt generates them, so the copy can run beside the original),
no NVRAM path (libvirt makes one for the new name) and its backed-up disks point at the
restored files. Everything else that reaches the host (other disks, passthrough devices,
host files and sockets, `<qemu:commandline>`, ...) is dropped and listed, as
core/guest_only.py specifies, unless the caller keeps host devices on purpose. The
original's disks the backup does not restore are dropped either way.
"""

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

from virtbackup.core.errors import UsageError
from virtbackup.core.guest_only import drop_unrestored_disks, keep_guest_only
from virtbackup.core.qcow2_refs import ImageReferences
from virtbackup.core.text import one_line

# libvirt keeps a persistent domain in /etc/libvirt/qemu/NAME.xml, written as NAME.xml.new
# first: a longer name cannot be defined on a filesystem with 255-byte names.
MAX_NAME_BYTES = 255 - len(".xml.new")
# Formats whose images name no other host file, or (qcow2) whose names are known from the
# restored header and cut. Any other (vmdk, vdi, vhdx, vpc, qed, ...) could make qemu open
# a host path its image names (a vmdk descriptor's extent, a backing file).
KNOWN_REFERENCE_FORMATS = frozenset({"raw", "qcow2"})


class RestoreXmlError(ValueError):
    """The text is not a domain XML this function can transform."""


@dataclass(frozen=True)
class RestoredDisk:
    path: str  # the restored image file
    format: str  # raw, qcow2, ... (the driver type)
    # host files its own header names (known once it is restored; see core/qcow2_refs.py)
    references: ImageReferences = ImageReferences()


def check_domain_name(name: str) -> None:
    """UsageError unless libvirt's qemu driver accepts `name` for a new domain: not
    empty, no '/', no control characters (XML cannot hold most, libvirt refuses a
    newline), short enough for a file name."""
    problem = None
    if not name:
        problem = "is empty"
    elif "/" in name:
        problem = "contains '/'"
    elif any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        problem = "contains a control character"
    elif len(name.encode()) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem is not None:
        raise UsageError(
            f"--define {name!r} cannot name a domain: it {problem}", "choose another name"
        )


@dataclass(frozen=True)
class NewDomainXml:
    xml: str
    dropped: tuple[str, ...]  # host resources left out of the new domain, for one warning


def domain_xml_for_restore(
    xml: str,
    new_name: str,
    disks: Mapping[str, RestoredDisk],
    keep_host_devices: bool = False,
) -> NewDomainXml:
    """`disks` maps a disk target (vda) to its restored file. Other disks are dropped;
    host resources too, or kept as they are with `keep_host_devices`; so is a restored
    disk whose image could name host files that are not known to be cut (a format other
    than raw and qcow2, a qcow2 data file)."""
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
    for genid in domain.findall("genid"):
        genid.text = None  # empty: libvirt generates a new one
    for os_element in domain.findall("os"):
        for nvram in os_element.findall("nvram"):
            os_element.remove(nvram)
    for interface in domain.findall("devices/interface"):
        for mac in interface.findall("mac"):
            interface.remove(mac)
    if keep_host_devices:
        dropped = drop_unrestored_disks(domain, set(disks))
    else:
        dropped = keep_guest_only(domain, set(disks))
    found = set()
    for devices in domain.findall("devices"):
        for disk in devices.findall("disk"):
            target = disk.find("target")
            dev = target.get("dev") if target is not None else None
            if dev is None or dev not in disks or dev in found:
                continue
            found.add(dev)
            restored = disks[dev]
            if restored.format not in KNOWN_REFERENCE_FORMATS and not keep_host_devices:
                devices.remove(disk)
                dropped.append(
                    f"disk {dev} (its {one_line(restored.format)} image can name other host "
                    "files; only raw and qcow2 are attached)"
                )
                continue
            data_file = restored.references.data_file
            if data_file is not None and not keep_host_devices:
                # Its data would be read from (and written to) that host file.
                devices.remove(disk)
                named = one_line(data_file) or "(unnamed)"
                dropped.append(f"disk {dev} (its image's data file {named})")
                continue
            _point_disk_at(disk, restored, cut_backing=not keep_host_devices)
            backing = restored.references.backing_file
            if backing is not None and not keep_host_devices:
                dropped.append(f"disk {dev} backing file {one_line(backing)}")
    missing = sorted(set(disks) - found)
    if missing:
        raise RestoreXmlError(f"it has no disk with target {', '.join(missing)}")
    return NewDomainXml(ET.tostring(domain, encoding="unicode") + "\n", tuple(dropped))


def _set_name(domain: ET.Element, new_name: str) -> None:
    name = domain.find("name")
    if name is None:
        name = ET.Element("name")
        domain.insert(0, name)
    name.text = new_name


def _point_disk_at(disk: ET.Element, restored: RestoredDisk, cut_backing: bool) -> None:
    # A restored disk is always a plain file, whatever it was (block device, volume,
    # network source: its credentials, <auth>, mean nothing to a file).
    disk.set("type", "file")
    if disk.get("device") == "lun":
        disk.set("device", "disk")
    for child in list(disk):
        if child.tag in ("source", "backingStore", "mirror", "auth"):
            disk.remove(child)
    driver = disk.find("driver")
    if driver is None:
        driver = ET.SubElement(disk, "driver", {"name": "qemu"})
    driver.set("type", restored.format)
    source = ET.Element("source", {"file": restored.path})
    disk.insert(list(disk).index(driver) + 1, source)
    if cut_backing:
        # Empty: no backing file, whatever the image's header names (libvirt would
        # otherwise follow it, hand it to qemu and relabel it for the guest).
        disk.insert(list(disk).index(source) + 1, ET.Element("backingStore"))


def with_nbd_backing(xml: str, uuid: str, backings: Mapping[str, tuple[str, str]]) -> str:
    """The new domain's XML with the uuid `uuid`, each disk of `backings` (target ->
    (unix socket, format)) reading what its overlay lacks from that NBD server
    (`restore --instant`)."""
    domain = ET.fromstring(xml)
    ET.SubElement(domain, "uuid").text = uuid
    for disk in domain.findall("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev is None or dev not in backings:
            continue
        socket, fmt = backings[dev]
        for old in disk.findall("backingStore"):
            disk.remove(old)
        store = ET.Element("backingStore", {"type": "network"})
        ET.SubElement(store, "format", {"type": fmt})
        source = ET.SubElement(store, "source", {"protocol": "nbd"})
        ET.SubElement(source, "host", {"transport": "unix", "socket": socket})
        ET.SubElement(store, "backingStore")
        source_element = disk.find("source")
        position = list(disk).index(source_element) + 1 if source_element is not None else 0
        disk.insert(position, store)
    return ET.tostring(domain, encoding="unicode") + "\n"
