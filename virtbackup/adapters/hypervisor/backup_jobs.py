"""Pull backups through libvirt's backup API on one domain (`Domain.backups`): begin one
(optionally with a checkpoint), see whether one runs, end it, and the domain's
checkpoints.

A pull job makes qemu serve each disk's point-in-time view over NBD (copy-before-write
into a scratch file); it runs until it is aborted, which is how a pull job ends.
"""

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from virtbackup.adapters.hypervisor.bindings import HypervisorError, message

_POLL_SECONDS = 0.2


class BackupJobs:
    def __init__(self, libvirt: Any, handle: Any, name: str) -> None:
        self._libvirt = libvirt
        self._handle = handle
        self.name = name

    def _call(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except self._libvirt.libvirtError as err:
            raise HypervisorError(f"cannot {what} of {self.name}: {message(err)}") from None

    def begin_pull(self, backup_xml: str, checkpoint_xml: str | None) -> None:
        """Start a pull backup job (virDomainBackupBegin) and, with `checkpoint_xml`, the
        checkpoint of its instant."""
        self._call("begin a backup job", self._handle.backupBegin, backup_xml, checkpoint_xml, 0)

    def job_xml(self) -> str | None:
        """The XML of the domain's running backup job; None when none runs."""
        libvirt = self._libvirt
        try:
            return str(self._handle.backupGetXMLDesc(0))
        except libvirt.libvirtError as err:
            if err.get_error_code() in (
                libvirt.VIR_ERR_NO_DOMAIN_BACKUP,
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                return None
            raise HypervisorError(
                f"cannot read the backup job of {self.name}: {message(err)}"
            ) from None

    def abort(self, timeout: float = 30.0) -> None:
        """End the domain's backup job, if one runs, and wait until it is gone."""
        if self.job_xml() is None:
            return
        self._call("end the backup job", self._handle.abortJob)
        deadline = time.monotonic() + timeout
        while self.job_xml() is not None:
            if time.monotonic() > deadline:
                raise HypervisorError(
                    f"the backup job of {self.name} did not end within {timeout:.0f}s"
                )
            time.sleep(_POLL_SECONDS)

    def checkpoints(self) -> list[str]:
        """The names of the domain's checkpoints, oldest first."""
        return list(self.checkpoint_times())

    def checkpoint_times(self) -> dict[str, int]:
        """Each checkpoint's creation time (seconds since the epoch, as libvirt keeps
        it), oldest first."""
        found = self._call("list the checkpoints", self._handle.listAllCheckpoints, 0)
        created = [(self._creation_time(c), str(c.getName())) for c in found]
        return {name: when for when, name in sorted(created)}

    def _creation_time(self, checkpoint: Any) -> int:
        xml = self._call("read a checkpoint", checkpoint.getXMLDesc, 0)
        text = ET.fromstring(xml).findtext("creationTime") or "0"
        return int(text) if text.isdigit() else 0

    def delete_checkpoint(self, name: str, *, metadata_only: bool = False) -> None:
        """Delete one checkpoint (libvirt merges its bitmap into its parent's); with
        `metadata_only` libvirt forgets it and leaves the images' bitmaps alone (the
        only way for a shut-off domain)."""
        checkpoint = self._call(
            f"find checkpoint {name}", self._handle.checkpointLookupByName, name, 0
        )
        flags = self._libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY if metadata_only else 0
        self._call(f"delete checkpoint {name}", checkpoint.delete, flags)

    def redefine_checkpoint(self, xml: str) -> None:
        """Give libvirt the metadata of a checkpoint whose bitmaps are in the images."""
        flags = self._libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
        self._call("redefine a checkpoint", self._handle.checkpointCreateXML, xml, flags)
