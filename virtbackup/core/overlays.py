"""Pure pieces of the snapshot method: overlay names, the snapshot XML, disk rewrites.

An overlay is named after the run, so it never collides with a file that exists and
`clean` can tell ours from anyone else's: next to the image it is
`<image>.virtbackup-<run id>.qcow2`; in a configured overlay directory, where images of
many domains meet, `<domain uuid>-<target>.virtbackup-<run id>.qcow2`.
"""

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import PurePath

from virtbackup.core.diskxml import DiskXmlError

OVERLAY_MARK = ".virtbackup-"


def overlay_path(
    original: str, target: str, domain_uuid: str, run_id: str, overlay_dir: PurePath | None
) -> PurePath:
    return run_file_path(original, target, domain_uuid, run_id, overlay_dir, ".qcow2")


def run_file_path(
    image: str,
    target: str,
    domain_uuid: str,
    run_id: str,
    overlay_dir: PurePath | None,
    suffix: str,
) -> PurePath:
    """A file a run puts beside a disk's image, or into the overlay directory: an
    overlay, a backup job's scratch file (core/backup_job)."""
    if overlay_dir is None:
        path = PurePath(image)
        return path.with_name(f"{path.name}{OVERLAY_MARK}{run_id}{suffix}")
    return overlay_dir / f"{domain_uuid}-{target}{OVERLAY_MARK}{run_id}{suffix}"


def snapshot_xml(name: str, overlays: Mapping[str, str], all_targets: Iterable[str]) -> str:
    """A disk-only snapshot: an external qcow2 overlay at the given path for each disk in
    `overlays`, and none for every other disk of the domain."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    ET.SubElement(
        root, "description"
    ).text = "virtbackup backup overlay; removed by the run or by 'virtbackup clean'"
    disks = ET.SubElement(root, "disks")
    for target in all_targets:
        disk = ET.SubElement(disks, "disk", name=target)
        if target in overlays:
            disk.set("snapshot", "external")
            disk.set("type", "file")
            ET.SubElement(disk, "driver", type="qcow2")
            ET.SubElement(disk, "source", file=overlays[target])
        else:
            disk.set("snapshot", "no")
    return ET.tostring(root, encoding="unicode")


def rewrite_disk_source(
    domain_xml: str, target: str, source_type: str, path: str, fmt: str
) -> str | None:
    """The domain XML with disk `target` pointing at `path` again (type, driver type and
    source; any recorded backing chain dropped: libvirt reads it from the image).
    None when the XML has no such disk."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as err:
        raise DiskXmlError(f"cannot parse the domain XML: {err}") from None
    for disk in root.iterfind("./devices/disk"):
        element = disk.find("target")
        if element is None or element.get("dev") != target:
            continue
        disk.set("type", source_type)
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", fmt)
        for child in list(disk):
            if child.tag in ("source", "backingStore"):
                disk.remove(child)
        attribute = "dev" if source_type == "block" else "file"
        source = ET.Element("source", {attribute: path})
        disk.insert(list(disk).index(driver) + 1, source)
        return ET.tostring(root, encoding="unicode")
    return None
