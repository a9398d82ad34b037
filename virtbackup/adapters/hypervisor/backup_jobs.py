"""Pull backups through libvirt's backup API on one domain: begin one (optionally with a
checkpoint), see whether one runs, end it, and the domain's checkpoints.

A pull job makes qemu serve each disk's point-in-time view over NBD (copy-before-write
into a scratch file); it runs until it is aborted, which is how a pull job ends.
"""

import time
import xml.etree.ElementTree as ET
from typing import Any

from virtbackup.adapters.hypervisor.bindings import HypervisorError, message
from virtbackup.adapters.hypervisor.domain import POLL_SECONDS, Domain


def begin_pull_backup(dom: Domain, backup_xml: str, checkpoint_xml: str | None) -> None:
    """Start a pull backup job (virDomainBackupBegin) and, with `checkpoint_xml`, the
    checkpoint of its instant."""
    dom._call("begin a backup job", dom.handle.backupBegin, backup_xml, checkpoint_xml, 0)


def backup_job_xml(dom: Domain) -> str | None:
    """The XML of the domain's running backup job; None when none runs."""
    libvirt: Any = dom._libvirt
    try:
        return str(dom.handle.backupGetXMLDesc(0))
    except libvirt.libvirtError as err:
        if err.get_error_code() in (
            libvirt.VIR_ERR_NO_DOMAIN_BACKUP,
            libvirt.VIR_ERR_OPERATION_INVALID,
        ):
            return None
        raise HypervisorError(f"cannot read the backup job of {dom.name}: {message(err)}") from None


def abort_backup_job(dom: Domain, timeout: float = 30.0) -> None:
    """End the domain's backup job and wait until it is gone (libvirt ends it at once,
    qemu may take a moment to release the scratch files)."""
    if backup_job_xml(dom) is None:
        return
    dom._call("end the backup job", dom.handle.abortJob)
    deadline = time.monotonic() + timeout
    while backup_job_xml(dom) is not None:
        if time.monotonic() > deadline:
            raise HypervisorError(f"the backup job of {dom.name} did not end within {timeout}s")
        time.sleep(POLL_SECONDS)


def checkpoint_names(dom: Domain) -> list[str]:
    """The names of the domain's checkpoints, oldest first."""
    checkpoints = dom._call("list the checkpoints", dom.handle.listAllCheckpoints, 0)
    created = [(_creation_time(dom, c), str(c.getName())) for c in checkpoints]
    return [name for _when, name in sorted(created)]


def _creation_time(dom: Domain, checkpoint: Any) -> int:
    xml = dom._call("read a checkpoint", checkpoint.getXMLDesc, 0)
    text = ET.fromstring(xml).findtext("creationTime") or "0"
    return int(text) if text.isdigit() else 0


def delete_checkpoint(dom: Domain, name: str) -> None:
    """Delete one checkpoint (libvirt merges its bitmap into its parent's)."""
    checkpoint = dom._call("find a checkpoint", dom.handle.checkpointLookupByName, name, 0)
    dom._call(f"delete checkpoint {name}", checkpoint.delete, 0)
