"""One libvirt domain, as the engine uses it: its state and definitions, external
overlays and the block jobs that merge them back, shutdown and start, the guest agent.

Each method does one libvirt call (or one wait on one) and turns libvirt's errors into
ours; the decisions live in the engine and in core/undo. Pull backups through libvirt's
backup API (virDomainBackupBegin, checkpoints) are `backups` (backup_jobs).

The guest agent is reached through libvirt's public APIs, which send `guest-sync` with a
5 s timeout first, so a dead or hung agent fails fast instead of blocking the run; the
raw `qemuAgentCommand` would mark the domain as tainted ("custom-ga-command").
"""

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from virtbackup.adapters.hypervisor.backup_jobs import BackupJobs
from virtbackup.adapters.hypervisor.bindings import HypervisorError, message
from virtbackup.core.agent_channel import agent_connected
from virtbackup.core.consistency_errors import CommitFailed, SnapshotFailed
from virtbackup.core.diskxml import parse_disks
from virtbackup.core.model import DiskFacts, DomainState

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2

_STATE_NAMES = {
    "VIR_DOMAIN_NOSTATE": DomainState.NOSTATE,
    "VIR_DOMAIN_RUNNING": DomainState.RUNNING,
    "VIR_DOMAIN_BLOCKED": DomainState.BLOCKED,
    "VIR_DOMAIN_PAUSED": DomainState.PAUSED,
    "VIR_DOMAIN_SHUTDOWN": DomainState.SHUTDOWN,
    "VIR_DOMAIN_SHUTOFF": DomainState.SHUTOFF,
    "VIR_DOMAIN_CRASHED": DomainState.CRASHED,
    "VIR_DOMAIN_PMSUSPENDED": DomainState.PMSUSPENDED,
}


class AgentError(HypervisorError):
    """The guest agent refused or failed a command; `reason` is libvirt's own words."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(text)
        self.reason = reason


def domain_state(libvirt: Any, code: int) -> DomainState:
    for constant, state in _STATE_NAMES.items():
        if getattr(libvirt, constant) == code:
            return state
    return DomainState.NOSTATE


def disks_of(xml: str) -> dict[str, DiskFacts]:
    return {disk.target: disk for disk in parse_disks(xml)}


class Domain:
    """A handle on one domain of a Hypervisor; its name and uuid never change."""

    def __init__(self, libvirt: Any, handle: Any) -> None:
        self._libvirt = libvirt
        self.handle = handle  # the virDomain, for the other modules of this package
        self.name = str(handle.name())
        self.uuid = str(handle.UUIDString())
        self.backups = BackupJobs(libvirt, handle, self.name)  # pull backups, checkpoints

    def __repr__(self) -> str:
        return f"Domain({self.name!r})"

    def _call(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except self._libvirt.libvirtError as err:
            raise HypervisorError(f"cannot {what} of {self.name}: {message(err)}") from None

    # -- state and definitions ---------------------------------------------------------

    def state(self) -> DomainState:
        code = self._call("read the state", self.handle.state)[0]
        return domain_state(self._libvirt, code)

    def is_active(self) -> bool:
        return bool(self._call("read the state", self.handle.isActive))

    def is_persistent(self) -> bool:
        return bool(self._call("read the state", self.handle.isPersistent))

    def live_xml(self) -> str:
        return str(self._call("read the XML", self.handle.XMLDesc, 0))

    def config_xml(self) -> str | None:
        """The persistent definition with its secrets, or None for a transient domain."""
        if not self.is_persistent():
            return None
        flags = self._libvirt.VIR_DOMAIN_XML_INACTIVE | self._libvirt.VIR_DOMAIN_XML_SECURE
        return str(self._call("read the definition", self.handle.XMLDesc, flags))

    def agent_connected(self) -> bool:
        """Whether a guest agent is connected to the domain's channel now."""
        return agent_connected(self.live_xml())

    def live_disks(self) -> dict[str, DiskFacts]:
        """The disks qemu runs on now, by target."""
        return disks_of(self.live_xml())

    def config_disks(self) -> dict[str, DiskFacts] | None:
        """The disks of the persistent definition, by target; None when transient."""
        xml = self.config_xml()
        return None if xml is None else disks_of(xml)

    # -- overlays and block jobs -------------------------------------------------------

    def create_overlays(self, xml: str, *, quiesce: bool) -> None:
        """An external disk-only snapshot, all disks at once, without libvirt metadata.

        With `quiesce` libvirt freezes the guest's filesystems through its agent, takes
        the snapshot and thaws them, all inside the daemon: the thaw happens even if we
        die.
        """
        libvirt = self._libvirt
        flags = (
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        )
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        try:
            self.handle.snapshotCreateXML(xml, flags)
        except libvirt.libvirtError as err:
            raise SnapshotFailed(
                f"cannot create the overlays of {self.name}: {message(err)}"
            ) from None

    def block_job_active(self, target: str) -> bool:
        return bool(self._call("read the block jobs", self.handle.blockJobInfo, target, 0))

    def start_active_commit(self, target: str) -> None:
        """Merge the active overlay of `target` into the image right below it (and no
        lower: a base image further down the chain stays untouched)."""
        libvirt = self._libvirt
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
        try:
            self.handle.blockCommit(target, None, None, 0, flags)
        except libvirt.libvirtError as err:
            raise CommitFailed(
                f"cannot start merging the overlay of {self.name} {target}: {message(err)}",
                "the domain still runs on the overlay; run 'virtbackup clean' to retry",
            ) from None

    def pivot_when_ready(self, target: str, timeout: float) -> None:
        """Wait until the commit job of `target` has caught up, then switch the disk back
        to the image below the overlay. CommitFailed when that takes over `timeout`."""
        libvirt = self._libvirt
        deadline = time.monotonic() + timeout
        last_error = "no progress"
        while True:
            info = self._call("read the block jobs", self.handle.blockJobInfo, target, 0)
            if not info:
                raise CommitFailed(
                    f"the merge job of {self.name} {target} ended before the switch back",
                    "run 'virtbackup clean' to check and finish it",
                )
            if info.get("cur") == info.get("end"):
                try:
                    self.handle.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    return
                except libvirt.libvirtError as err:
                    last_error = message(err)  # not ready yet: the mirror still converges
            if time.monotonic() >= deadline:
                raise CommitFailed(
                    f"merging the overlay of {self.name} {target} did not finish within "
                    f"{timeout:.0f}s ({last_error})",
                    "the domain still runs on the overlay and the merge goes on; "
                    "run 'virtbackup clean' later to switch it back",
                )
            time.sleep(POLL_SECONDS)

    def start_block_pull(self, target: str) -> None:
        """Copy everything the disk `target` reads from its backing chain into its top
        image, which then stands alone (virDomainBlockPull, no base)."""
        self._call("start copying the backing data", self.handle.blockPull, target, 0, 0)

    def block_job_progress(self, target: str) -> tuple[int, int] | None:
        """(done, total) of the block job on `target`, None when none runs."""
        info = self._call("read the block jobs", self.handle.blockJobInfo, target, 0)
        if not info:
            return None
        return int(info.get("cur", 0)), int(info.get("end", 0))

    # -- run state ---------------------------------------------------------------------

    def request_shutdown(self, mode: str) -> bool:
        """Ask the guest to shut down ("acpi" or "agent"); False when it cannot be asked."""
        libvirt = self._libvirt
        flag = {
            "acpi": libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
            "agent": libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
        }[mode]
        try:
            self.handle.shutdownFlags(flag)
        except libvirt.libvirtError as err:
            if not self.is_active():
                return True  # it went off while we asked
            log.info("%s: %s shutdown request failed: %s", self.name, mode, message(err))
            return False
        return True

    def destroy(self) -> None:
        try:
            self.handle.destroy()
        except self._libvirt.libvirtError as err:
            if self.is_active():
                raise HypervisorError(f"cannot power off {self.name}: {message(err)}") from None

    def start(self, *, paused: bool = False) -> None:
        flags = self._libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        self._call("start", self.handle.createWithFlags, flags)

    def save_and_restart(self) -> None:
        """Save the running guest's memory (managed save), stop it and start it again
        from there: qemu opens its disks anew, the guest only pauses."""
        self._call("save", self.handle.managedSave, 0)
        self._call("start from its saved state", self.handle.createWithFlags, 0)

    def resume(self) -> None:
        self._call("resume", self.handle.resume)

    def wait_state(
        self,
        wanted: Collection[DomainState],
        timeout: float,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> bool:
        """Until the domain is in one of `wanted`; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.state() not in wanted:
            if time.monotonic() >= deadline or not keep_going():
                return False
            time.sleep(POLL_SECONDS)
        return True

    # -- the guest agent ---------------------------------------------------------------

    def _agent(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except self._libvirt.libvirtError as err:
            reason = message(err)
            text = f"the guest agent of {self.name} cannot {what}: {reason}"
            raise AgentError(text, reason) from None

    def freeze(self) -> int:
        """Freeze the guest's filesystems; the number frozen. Unlike a quiesced snapshot
        the thaw is ours to do: register it first. AgentError when it cannot."""
        return int(self._agent("freeze", self.handle.fsFreeze))

    def thaw(self) -> int:
        """Thaw the guest's filesystems; the number thawed (0 when none was frozen)."""
        return int(self._agent("thaw", self.handle.fsThaw))

    def fstrim(self) -> None:
        """Trim every mounted filesystem of the guest (guest-fstrim).

        Returns when the guest's FITRIM calls are done, which includes qemu passing the
        discards down to the image. Takes as long as the guest needs (large
        filesystems: minutes), but a silent agent fails within libvirt's sync timeout.
        """
        self._agent("trim", self.handle.fSTrim, None, 0, 0)

    def agent_silence(self) -> str | None:
        """None when the agent answers (guest-get-time), else why it does not.

        An agent that answers with an error (the command disabled in its configuration)
        still answers: only "not responding" and "not connected" count as silent.
        """
        libvirt = self._libvirt
        try:
            self.handle.getTime(0)
        except libvirt.libvirtError as err:
            silent = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_OPERATION_INVALID)
            if err.get_error_code() in silent:
                return message(err)
            log.debug("%s: agent answered get-time with an error: %s", self.name, message(err))
        return None
