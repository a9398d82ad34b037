"""Defining a new libvirt domain (for `restore --define`); the only libvirt call of the
data path, kept apart from discovery."""

from types import ModuleType
from typing import Any

from virtbackup.adapters.libvirt_conn import libvirt_module
from virtbackup.core.errors import UsageError, VirtbackupError


class DefineFailed(VirtbackupError):
    """libvirt refused the connection or the new domain."""


def ensure_name_free(uri: str, name: str) -> None:
    """UsageError if a domain called `name` exists; checked before restoring anything."""
    libvirt = libvirt_module()  # libvirt's own printing off: "not found" is the good case
    conn = _open(libvirt, uri)
    try:
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        raise UsageError(f"a domain named {name} already exists", "choose another --define NAME")
    finally:
        conn.close()


def define_domain(uri: str, xml: str) -> str:
    """Define the domain (persistent, not started) and return its new uuid."""
    libvirt = libvirt_module()
    conn = _open(libvirt, uri)
    try:
        domain = conn.defineXML(xml)
        return str(domain.UUIDString())
    except libvirt.libvirtError as err:
        raise DefineFailed(f"libvirt refused the new domain: {err.get_error_message()}") from None
    finally:
        conn.close()


def _open(libvirt: ModuleType, uri: str) -> Any:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise DefineFailed(f"cannot connect to {uri}: {err.get_error_message()}") from None
