"""Whether libvirt offers the backup API for a domain: its domain capabilities (for the
domain's emulator, architecture, machine type and virtualization type) say
`<backup supported='yes'/>`. Older libvirt, or a qemu without the blockdev layer, leaves
the element out or says 'no'. Pure, tested without libvirt."""

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from virtbackup.core.diskxml import parse_domain_xml


@dataclass(frozen=True)
class CapsQuery:
    """What `virConnectGetDomainCapabilities` is asked for one domain (None: the default)."""

    emulator: str | None
    arch: str | None
    machine: str | None
    virttype: str | None


def caps_query(domain_xml: str) -> CapsQuery:
    """The capabilities query that describes the domain of `domain_xml`."""
    root = parse_domain_xml(domain_xml)
    os_type = root.find("./os/type")
    emulator = root.findtext("./devices/emulator")
    return CapsQuery(
        emulator=emulator.strip() if emulator else None,
        arch=None if os_type is None else os_type.get("arch"),
        machine=None if os_type is None else os_type.get("machine"),
        virttype=root.get("type"),
    )


def offers_backup(caps_xml: str) -> bool:
    """Whether the domain capabilities say the backup API is supported."""
    try:
        root = ET.fromstring(caps_xml)
    except ET.ParseError:
        return False
    backup = root.find("./features/backup")
    return backup is not None and backup.get("supported") == "yes"
