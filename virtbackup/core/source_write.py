"""`restore --to-source`: which of a backup's disks are written back into their own
source, and the name qemu opens that source by. Pure, tested without libvirt.

Only network disks (NBD, iSCSI) and block devices are written this way; a file disk is
restored as a file under `--to`, as without the option. The source is taken from the
domain XML the backup holds (the disk's description at the backup's instant).

An iSCSI source with CHAP (`<auth>`) is opened with the libvirt secret the disk names:
the engine fetches its value at run time into a 0600 file in a private directory and
qemu reads it from there (`--object secret,id=SECRET_ID,file=...`), so that it appears
in no argument list. An unencrypted backup's domain.xml leaves out a secret's usage
name, so the secret is named by the domain's current definition when it still has the
same disk on the same source.
"""

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from virtbackup.core.diskxml import network_url, parse_domain_xml
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.manifest import DiskRecord

NBD_PORT = 10809
ISCSI_PORT = 3260


class SourceRefused(VirtbackupError):
    """A disk's source cannot, or must not, be written by restore --to-source."""


SECRET_ID = "virtbackup-secret0"  # the qemu object holding the secret of the source
PUT_BACK = "restore it with --to and put it back with qemu-img"


@dataclass(frozen=True)
class SecretRef:
    """A libvirt secret as a disk's <auth> names it: by uuid, else by usage."""

    type: str  # iscsi, ceph
    uuid: str | None
    usage: str | None


@dataclass(frozen=True)
class SourceTarget:
    target: str
    source: str  # as the manifest names it: a device path or protocol://host:port/name
    qemu_name: str  # what qemu-img opens
    format: str
    virtual_size: int
    device: str | None = None  # a host block device
    secret: SecretRef | None = None  # its value goes to qemu as the object SECRET_ID


def source_target(
    domain_xml: str, disk: DiskRecord, defined_xml: str | None = None
) -> SourceTarget | None:
    """Where restore --to-source writes `disk`, described by the backup's `domain_xml`
    (its credentials by `defined_xml`, the domain's definition now, when it has the same
    disk there); None for a disk restored as a file only. SourceRefused when its source
    cannot be written."""
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
    name = _qemu_network_name(source)
    if name is None:
        protocol = source.get("protocol", "?")
        raise SourceRefused(
            f"{disk.target}: restore --to-source does not write {protocol} sources "
            f"({disk.source}): not written",
            PUT_BACK,
        )
    auth = _auth(_current(element, disk, defined_xml))
    if auth is None:
        return SourceTarget(disk.target, disk.source, name, disk.format, disk.virtual_size)
    if source.get("protocol") != "iscsi":
        raise SourceRefused(
            f"{disk.target}: {disk.source} needs credentials, which restore --to-source "
            "passes to iSCSI only: not written",
            PUT_BACK,
        )
    user, secret = auth
    if secret.uuid is None and secret.usage is None:
        raise SourceRefused(
            f"{disk.target}: the backup does not say which libvirt secret opens "
            f"{disk.source} (an unencrypted backup leaves its usage name out): not written",
            "define the domain with that disk again, or " + PUT_BACK,
        )
    return SourceTarget(
        disk.target,
        disk.source,
        _iscsi_with_chap(source, user),
        disk.format,
        disk.virtual_size,
        secret=secret,
    )


def _current(element: ET.Element, disk: DiskRecord, defined_xml: str | None) -> ET.Element:
    """The disk's element in the domain's definition now when that has the same disk on
    the same source, else the backup's."""
    if defined_xml is None:
        return element
    defined = _disk_element(parse_domain_xml(defined_xml), disk.target)
    source = None if defined is None else defined.find("source")
    if defined is None or source is None or network_url(source) != disk.source:
        return element
    return defined


def _auth(element: ET.Element) -> tuple[str, SecretRef] | None:
    """The user and secret of a disk's <auth> (libvirt puts it in <disk> or <source>)."""
    auth = element.find("auth")
    if auth is None:
        auth = element.find("source/auth")
    if auth is None:
        return None
    secret = auth.find("secret")
    if secret is None:
        return auth.get("username", ""), SecretRef("", None, None)
    ref = SecretRef(secret.get("type", ""), secret.get("uuid"), secret.get("usage"))
    return auth.get("username", ""), ref


def _iscsi_with_chap(source: ET.Element, user: str) -> str:
    """qemu's description of an iSCSI LUN opened with CHAP, its password the object
    SECRET_ID (a json: name: the URL form has no place for a secret object)."""
    host = source.find("host")
    portal = "" if host is None else f"{host.get('name', '')}:{host.get('port', ISCSI_PORT)}"
    iqn, slash, lun = source.get("name", "").rpartition("/")
    if not slash:  # no LUN named: libvirt's default, 0
        iqn, lun = source.get("name", ""), "0"
    options = {
        "driver": "iscsi",
        "transport": "tcp",
        "portal": portal,
        "target": iqn,
        "lun": int(lun) if lun.isdigit() else 0,
        "user": user,
        "password-secret": SECRET_ID,
    }
    return "json:" + json.dumps({"file": options}, separators=(",", ":"))


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
