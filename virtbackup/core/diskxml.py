"""Read a libvirt domain XML: its disks (the guest agent channel: core/agent_channel).
Pure, tested without libvirt.

The live XML of a running domain carries each disk's backing chain as nested
`<backingStore>` elements (an empty one ends the chain); the inactive XML usually has
none, so discovery asks qemu-img for the chain of offline images. A `type='volume'`
disk names a pool and a volume: discovery resolves them to a path through libvirt.
"""

import xml.etree.ElementTree as ET

from virtbackup.core.errors import VirtbackupError
from virtbackup.core.model import DiskFacts


class DiskXmlError(VirtbackupError):
    """libvirt handed us XML we cannot read (never expected from a real daemon)."""


def parse_disks(xml: str) -> list[DiskFacts]:
    """The `<disk>` devices of a domain XML, in document order, without sizes."""
    root = parse_domain_xml(xml)
    return [_disk(element) for element in root.iterfind("./devices/disk")]


def parse_domain_xml(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as err:
        raise DiskXmlError(f"cannot parse the domain XML: {err}") from None


def _disk(element: ET.Element) -> DiskFacts:
    source_type = element.get("type", "file")
    source = element.find("source")
    target = element.find("target")
    driver = element.find("driver")
    pool = volume = network = None
    if source_type == "volume" and source is not None:
        pool, volume = source.get("pool"), source.get("volume")
    if source_type == "network" and source is not None:
        network = network_url(source)
    return DiskFacts(
        target=(target.get("dev") if target is not None else None) or "?",
        device=element.get("device", "disk"),
        source_type=source_type,
        path=_local_path(source_type, source),
        format=driver.get("type") if driver is not None else None,
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
        backing_chain=_backing_chain(element),
        pool=pool,
        volume=volume,
        network=network,
        discard=driver.get("discard") if driver is not None else None,
    )


def _local_path(source_type: str, source: ET.Element | None) -> str | None:
    """The host path of a file or block source (a volume's path comes from its pool)."""
    if source is None:
        return None
    attribute = {"file": "file", "block": "dev", "dir": "dir"}.get(source_type)
    if attribute is None:
        return None
    return source.get(attribute) or None


def network_url(source: ET.Element) -> str:
    """A readable location of a network source: protocol://host:port/name."""
    protocol = source.get("protocol", "network")
    host = source.find("host")
    where = ""
    if host is not None:
        if host.get("transport") == "unix":
            where = f"unix:{host.get('socket', '')}"
        else:
            where = host.get("name", "")
            if host.get("port"):
                where += f":{host.get('port')}"
    name = source.get("name", "")
    return f"{protocol}://{where}/{name}" if name else f"{protocol}://{where}"


def _backing_chain(disk: ET.Element) -> tuple[str, ...]:
    """Backing images below the disk's source, top first, as libvirt reports them."""
    chain: list[str] = []
    store = disk.find("backingStore")
    while store is not None:
        source = store.find("source")
        if source is None:  # an empty <backingStore/> ends the chain
            break
        store_type = store.get("type", "file")
        if store_type == "network":
            chain.append(network_url(source))
        else:
            location = _local_path(store_type, source)
            if location is None and store_type == "volume":
                location = f"{source.get('pool')}/{source.get('volume')}"
            chain.append(location or "?")
        store = store.find("backingStore")
    return tuple(chain)
