"""Thin libvirt operations the consistency layer needs: state, overlays, commit, shutdown.

Each function does one libvirt call (or one wait on one) and turns libvirt's errors
into ours; the decisions live in engine/methods/stable_images and core/undo.
"""

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from virtbackup.adapters import runner
from virtbackup.adapters.discovery import domain_state
from virtbackup.adapters.libvirt_conn import libvirt_module
from virtbackup.core.consistency_errors import CommitFailed, SnapshotFailed
from virtbackup.core.diskxml import parse_disks
from virtbackup.core.model import DiskFacts, DomainState
from virtbackup.core.overlays import rewrite_disk_source

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
QEMU_IMG_COMMIT_TIMEOUT = 24 * 3600.0


def message(err: Any) -> str:
    """The text of a libvirtError without libvirt's prefixes."""
    text = err.get_error_message() if hasattr(err, "get_error_message") else None
    return str(text or err).strip()


def lookup_uuid(conn: Any, uuid: str) -> Any | None:
    """The domain with this uuid, or None when it no longer exists."""
    libvirt = libvirt_module()
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def state(dom: Any) -> DomainState:
    return domain_state(libvirt_module(), dom.state()[0])


def is_active(dom: Any) -> bool:
    return bool(dom.isActive())


def live_xml(dom: Any) -> str:
    return str(dom.XMLDesc(0))


def config_xml(dom: Any) -> str | None:
    """The persistent definition, or None for a transient domain."""
    if not dom.isPersistent():
        return None
    libvirt = libvirt_module()
    return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))


def disks_of(xml: str) -> dict[str, DiskFacts]:
    return {disk.target: disk for disk in parse_disks(xml)}


def disk_source(xml: str | None, target: str) -> str | None:
    if xml is None:
        return None
    disk = disks_of(xml).get(target)
    return disk.path if disk else None


# -- overlays ---------------------------------------------------------------------------


def create_overlays(dom: Any, xml: str, *, quiesce: bool) -> None:
    """An external disk-only snapshot, all disks at once, without libvirt metadata.

    With `quiesce` libvirt freezes the guest's filesystems through its agent, takes the
    snapshot and thaws them, all inside the daemon: the thaw happens even if we die.
    """
    libvirt = libvirt_module()
    flags = (
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
    )
    if quiesce:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
    try:
        dom.snapshotCreateXML(xml, flags)
    except libvirt.libvirtError as err:
        raise SnapshotFailed(
            f"cannot create the overlays of {dom.name()}: {message(err)}"
        ) from None


def freeze(dom: Any) -> int:
    """Freeze the guest's filesystems through its agent; the number frozen.

    Unlike a quiesced libvirt snapshot the thaw is ours to do: register it first."""
    return int(dom.fsFreeze())


def thaw(dom: Any) -> int:
    """Thaw the guest's filesystems; the number thawed (0 when none was frozen)."""
    return int(dom.fsThaw())


def block_job_active(dom: Any, target: str) -> bool:
    return bool(dom.blockJobInfo(target, 0))


def start_active_commit(dom: Any, target: str) -> None:
    """Merge the active overlay of `target` into the image right below it (and no lower:
    a base image further down the chain stays untouched)."""
    libvirt = libvirt_module()
    flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
    try:
        dom.blockCommit(target, None, None, 0, flags)
    except libvirt.libvirtError as err:
        raise CommitFailed(
            f"cannot start merging the overlay of {dom.name()} {target}: {message(err)}",
            "the domain still runs on the overlay; run 'virtbackup clean' to retry",
        ) from None


def pivot_when_ready(dom: Any, target: str, timeout: float) -> None:
    """Wait until the commit job of `target` has caught up, then switch the disk back to
    the image below the overlay. CommitFailed when that takes longer than `timeout`."""
    libvirt = libvirt_module()
    deadline = time.monotonic() + timeout
    last_error = "no progress"
    while True:
        info = dom.blockJobInfo(target, 0)
        if not info:
            raise CommitFailed(
                f"the merge job of {dom.name()} {target} ended before the switch back",
                "run 'virtbackup clean' to check and finish it",
            )
        if info.get("cur") == info.get("end"):
            try:
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                return
            except libvirt.libvirtError as err:
                last_error = message(err)  # not ready yet: the mirror still converges
        if time.monotonic() >= deadline:
            raise CommitFailed(
                f"merging the overlay of {dom.name()} {target} did not finish within "
                f"{timeout:.0f}s ({last_error})",
                "the domain still runs on the overlay and the merge goes on; "
                "run 'virtbackup clean' later to switch it back",
            )
        time.sleep(POLL_SECONDS)


def qemu_img_commit(overlay: str) -> None:
    """Merge an overlay nothing runs on into its backing image (a shut-off domain)."""
    runner.run(
        ["qemu-img", "commit", "-q", "-f", "qcow2", overlay], timeout=QEMU_IMG_COMMIT_TIMEOUT
    )


def redefine_disk(conn: Any, dom: Any, target: str, source_type: str, path: str, fmt: str) -> None:
    """Point the persistent definition's disk `target` at `path` (type, format)."""
    xml = config_xml(dom)
    if xml is None:
        return
    changed = rewrite_disk_source(xml, target, source_type, path, fmt)
    if changed is not None:
        conn.defineXML(changed)


# -- run state --------------------------------------------------------------------------


def request_shutdown(dom: Any, mode: str) -> bool:
    """Ask the guest to shut down ("acpi" or "agent"); False when it cannot be asked."""
    libvirt = libvirt_module()
    flag = {
        "acpi": libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
        "agent": libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
    }[mode]
    try:
        dom.shutdownFlags(flag)
    except libvirt.libvirtError as err:
        if not dom.isActive():
            return True  # it went off while we asked
        log.info("%s: %s shutdown request failed: %s", dom.name(), mode, message(err))
        return False
    return True


def destroy(dom: Any) -> None:
    libvirt = libvirt_module()
    try:
        dom.destroy()
    except libvirt.libvirtError:
        if dom.isActive():
            raise


def start(dom: Any, *, paused: bool = False) -> None:
    libvirt = libvirt_module()
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)


def resume(dom: Any) -> None:
    dom.resume()


def wait_state(
    dom: Any,
    wanted: Collection[DomainState],
    timeout: float,
    keep_going: Callable[[], bool] = lambda: True,
) -> bool:
    """Until the domain is in one of `wanted`; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while state(dom) not in wanted:
        if time.monotonic() >= deadline or not keep_going():
            return False
        time.sleep(POLL_SECONDS)
    return True
