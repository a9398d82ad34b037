"""The libvirt connection: open it (or say in one line why it cannot be opened) and
offer what the engine needs of the host: look-ups, discovery, define.

    with connect("qemu:///system") as hypervisor:
        domain = hypervisor.domain("web1")
        facts = hypervisor.facts(domain)
"""

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from virtbackup.adapters.hypervisor import discovery
from virtbackup.adapters.hypervisor.bindings import HypervisorError, libvirt_module, message
from virtbackup.adapters.hypervisor.domain import Domain, disks_of
from virtbackup.core.errors import UsageError
from virtbackup.core.model import DomainFacts
from virtbackup.core.overlays import rewrite_disk_source
from virtbackup.core.planning import UnknownDomain, select_domains
from virtbackup.core.source_write import SecretRef

log = logging.getLogger(__name__)

URI_EXAMPLES = "e.g. qemu:///system or qemu+ssh://HOST/system"


class SecretUnreadable(HypervisorError):
    """A libvirt secret a disk names is unknown, or private (libvirt keeps its value)."""


class ConnectFailed(UsageError):
    """The libvirt daemon cannot be reached, the URI is wrong, or access is denied."""


class DefineFailed(HypervisorError):
    """libvirt refused a new domain."""


class Hypervisor:
    """One open libvirt connection and the domains reached through it."""

    def __init__(self, handle: Any) -> None:
        self._libvirt = libvirt_module()
        self._conn = handle  # a virConnect; closed by whoever opened it

    @property
    def uri(self) -> str:
        return str(self._conn.getURI())

    @property
    def remote(self) -> bool:
        """Whether the domains run on another host: their image paths are not ours."""
        return is_remote(self.uri)

    # -- look-ups ----------------------------------------------------------------------

    def domain_names(self) -> list[str]:
        """Every domain libvirt knows: persistent and transient, active and inactive."""
        try:
            return sorted(str(dom.name()) for dom in self._conn.listAllDomains(0))
        except self._libvirt.libvirtError as err:
            raise HypervisorError(f"cannot list the domains: {message(err)}") from None

    def running_disk_locations(self) -> dict[str, set[str]]:
        """Where the disks of each running or paused domain are (host paths, network
        URLs), by domain name; a domain that ends while we look is left out."""
        libvirt = self._libvirt
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        try:
            handles = self._conn.listAllDomains(flags)
        except libvirt.libvirtError as err:
            raise HypervisorError(f"cannot list the running domains: {message(err)}") from None
        found = {}
        for handle in handles:
            try:
                name, xml = str(handle.name()), str(handle.XMLDesc(0))
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue
                raise HypervisorError(f"cannot read a domain's XML: {message(err)}") from None
            disks = disks_of(xml).values()
            found[name] = {disk.location for disk in disks if disk.location is not None}
        return found

    def secret_value(self, secret: SecretRef) -> bytes:
        """The value of a libvirt secret a disk names (by uuid, else by usage);
        SecretUnreadable when it is unknown, or private (libvirt keeps it to itself)."""
        libvirt = self._libvirt
        usage_types = {
            "iscsi": libvirt.VIR_SECRET_USAGE_TYPE_ISCSI,
            "ceph": libvirt.VIR_SECRET_USAGE_TYPE_CEPH,
        }
        try:
            if secret.uuid is not None:
                handle = self._conn.secretLookupByUUIDString(secret.uuid)
            else:
                usage_type = usage_types.get(secret.type, libvirt.VIR_SECRET_USAGE_TYPE_NONE)
                handle = self._conn.secretLookupByUsage(usage_type, secret.usage)
            return bytes(handle.value())
        except libvirt.libvirtError as err:
            raise SecretUnreadable(message(err)) from None

    def domain(self, name: str) -> Domain:
        """The domain called `name`; UnknownDomain (exit 2) when there is none."""
        found = self._lookup(self._conn.lookupByName, name)
        if found is None:
            raise UnknownDomain(
                f"unknown domain {name!r}", "'virtbackup list' shows the domains of the host"
            )
        return found

    def find(self, uuid: str) -> Domain | None:
        """The domain with this uuid, or None when it no longer exists."""
        return self._lookup(self._conn.lookupByUUIDString, uuid)

    def exists(self, name: str) -> bool:
        return self._lookup(self._conn.lookupByName, name) is not None

    def _lookup(self, lookup: Any, key: str) -> Domain | None:
        libvirt = self._libvirt
        try:
            return Domain(libvirt, lookup(key))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(f"cannot look up domain {key}: {message(err)}") from None

    # -- facts -------------------------------------------------------------------------

    def facts(self, domain: Domain) -> DomainFacts:
        """What virtbackup needs to know about one domain and each of its disks."""
        facts = self._facts_of(domain)
        if facts is None:
            raise HypervisorError(f"domain {domain.name} no longer exists")
        return facts

    def discover(
        self,
        names: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> list[DomainFacts]:
        """Facts about the selected domains (all when `names` is empty), in selection
        order. UnknownDomain (exit 2) when a name does not exist, with its close matches.
        A domain that disappears while we look is left out."""
        found = []
        for name in select_domains(self.domain_names(), names, include, exclude):
            domain = self._lookup(self._conn.lookupByName, name)
            facts = None if domain is None else self._facts_of(domain)
            if facts is None:
                log.warning("domain %s disappeared during discovery", name)
            else:
                found.append(facts)
        return found

    def _facts_of(self, domain: Domain) -> DomainFacts | None:
        libvirt = self._libvirt
        try:
            return discovery.domain_facts(libvirt, self._conn, domain.handle, local=not self.remote)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(f"cannot inspect {domain.name}: {message(err)}") from None

    # -- definitions -------------------------------------------------------------------

    def define(self, xml: str) -> str:
        """Define a domain (persistent, not started) and return its uuid."""
        try:
            return str(self._conn.defineXML(xml).UUIDString())
        except self._libvirt.libvirtError as err:
            raise DefineFailed(f"libvirt refused the new domain: {message(err)}") from None

    def redefine_disk(
        self, domain: Domain, target: str, source_type: str, path: str, fmt: str
    ) -> None:
        """Point the persistent definition's disk `target` at `path` (type, format)."""
        xml = domain.config_xml()
        if xml is None:
            return
        changed = rewrite_disk_source(xml, target, source_type, path, fmt)
        if changed is not None:
            try:
                self._conn.defineXML(changed)
            except self._libvirt.libvirtError as err:
                raise DefineFailed(
                    f"cannot change the definition of {domain.name}: {message(err)}"
                ) from None


@contextmanager
def connect(uri: str, *, readonly: bool = False) -> Iterator[Hypervisor]:
    """A Hypervisor on `uri`, closed on exit; ConnectFailed (exit 2) when it cannot open."""
    libvirt = libvirt_module()
    if not uri.strip():
        raise ConnectFailed("empty connection URI", URI_EXAMPLES)
    opener = libvirt.openReadOnly if readonly else libvirt.open
    try:
        conn = opener(uri)
    except libvirt.libvirtError as err:
        raise connect_error(libvirt, uri, err) from None
    log.debug("connected to %s%s", conn.getURI(), " (read-only)" if readonly else "")
    try:
        yield Hypervisor(conn)
    finally:
        try:
            conn.close()
        except libvirt.libvirtError as err:  # the daemon went away: nothing left to close
            log.debug("closing %s: %s", uri, err)


def is_remote(uri: str) -> bool:
    """Whether the URI reaches another host: its image paths are not ours to open."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return bool(parts.hostname) or transport in ("ssh", "libssh", "libssh2", "tcp", "tls")


def connect_error(libvirt: Any, uri: str, err: Any) -> ConnectFailed:
    """Turn a failed virConnectOpen into one line that says what to do."""
    code = err.get_error_code()
    text = message(err)
    lowered = text.lower()
    head = f"cannot connect to {uri}: {text}"
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_ARG) or (
        "uri" in lowered and code == libvirt.VIR_ERR_INTERNAL_ERROR
    ):
        return ConnectFailed(head, f"check --connect ({URI_EXAMPLES})")
    denied_codes = (
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_ERR_OPERATION_DENIED,
        libvirt.VIR_ERR_ACCESS_DENIED,
    )
    denied_words = ("permission denied", "polkit", "authentication", "system bus")
    if code in denied_codes or any(word in lowered for word in denied_words):
        if os.geteuid() == 0:
            return ConnectFailed(head, "access denied: check libvirtd's access control")
        return ConnectFailed(head, "access denied: run virtbackup as root or in the libvirt group")
    if is_remote(uri):
        return ConnectFailed(head, "check that the host is reachable and runs libvirtd")
    return ConnectFailed(head, "is libvirtd running? start it (libvirtd -d, or systemctl)")
