"""`restore --to-source`: which of a backup's disks are written back into their own
source, and the name qemu opens that source by. Pure, tested without libvirt.

Only network disks (NBD, iSCSI) and block devices are written this way; a file disk is
restored as a file under `--to`, as without the option. The source is taken from the
domain XML the backup holds (the disk's description at the backup's instant). A source
that needs credentials is refused: the backup keeps none of them, and guessing which
host secret unlocks the volume is not ours to do.
"""

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from virtbackup.core.diskxml import parse_domain_xml
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.manifest import DiskRecord

NBD_PORT = 10809
ISCSI_PORT = 3260


class SourceRefused(VirtbackupError):
    """A disk's source cannot, or must not, be written by restore --to-source."""


@dataclass(frozen=True)
class SourceTarget:
    target: str
    source: str  # as the manifest names it: a device path or protocol://host:port/name
    qemu_name: str  # what qemu-img opens
    format: str
    virtual_size: int
    device: str | None = None  # a host block device


def source_target(domain_xml: str, disk: DiskRecord) -> SourceTarget | None:
    """Where restore --to-source writes `disk`; None for a disk restored as a file only.
    SourceRefused when its source cannot be written."""
    element = _disk_element(parse_domain_xml(domain_xml), disk.target)
    if element is None:
        raise SourceRefused(f"{disk.target} is not in the backup's domain XML: not written")
    source = element.find("source")
    kind = element.get("type", "file")
    if source is None or kind not in ("block", "network"):
        return None
    if kind == "block":
        device = source.get("dev", "")
        return SourceTarget(
            disk.target, disk.source, device, disk.format, disk.virtual_size, device
        )
    if element.find("auth") is not None or source.find("auth") is not None:
        raise SourceRefused(
            f"{disk.target}: {disk.source} needs credentials, which restore --to-source "
            "does not handle: not written",
            "restore it with --to and put it back with qemu-img",
        )
    name = _qemu_network_name(source)
    if name is None:
        protocol = source.get("protocol", "?")
        raise SourceRefused(
            f"{disk.target}: restore --to-source does not write {protocol} sources "
            f"({disk.source}): not written",
            "restore it with --to and put it back with qemu-img",
        )
    return SourceTarget(disk.target, disk.source, name, disk.format, disk.virtual_size)


def _disk_element(root: ET.Element, target: str) -> ET.Element | None:
    for element in root.iterfind("./devices/disk"):
        dev = element.find("target")
        if dev is not None and dev.get("dev") == target:
            return element
    return None


def _qemu_network_name(source: ET.Element) -> str | None:
    """qemu's URL of an NBD or iSCSI source; None for another protocol."""
    protocol = source.get("protocol")
    name = source.get("name", "")
    host = source.find("host")
    if host is None or protocol not in ("nbd", "iscsi"):
        return None
    if protocol == "nbd" and host.get("transport") == "unix":
        return f"nbd+unix:///{name}?socket={host.get('socket', '')}"
    default_port = NBD_PORT if protocol == "nbd" else ISCSI_PORT
    return f"{protocol}://{host.get('name', '')}:{host.get('port', default_port)}/{name}"
