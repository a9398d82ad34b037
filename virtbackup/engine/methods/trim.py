"""`--trim`: let a running guest free its deleted blocks just before the backup window.

The guest agent trims every mounted filesystem (libvirt's FSTrim); through disks with
discard='unmap' qemu punches the freed blocks out of the host images, so the backup
reads and stores less. What the host images shrank by (st_blocks before and after) is
reported; a trim that cannot help (no agent, no discard passthrough) is skipped with a
note, and a trim that fails never fails the backup.
"""

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from virtbackup.adapters import hypervisor as hv
from virtbackup.adapters.guest_agent import fstrim
from virtbackup.adapters.libvirt_conn import libvirt_module
from virtbackup.core.diskxml import agent_connected, has_agent_channel
from virtbackup.core.errors import Interrupted, VirtbackupError
from virtbackup.core.model import DiskFacts
from virtbackup.core.planning import DomainPlan
from virtbackup.core.progress import StepSink
from virtbackup.core.trim import plan_trim

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True)
class TrimOutcome:
    trimmed: bool
    reclaimed: int | None = None  # bytes the host image files shrank by; None: not measured
    warnings: tuple[str, ...] = ()


def trim_before_backup(conn: Any, plan: DomainPlan, steps: StepSink) -> TrimOutcome:
    """Trim the guest of `plan` if it runs, has an agent and passes discards to the host."""
    name = plan.domain.name
    libvirt = libvirt_module()
    try:
        return _trim(conn, plan, steps)
    except Interrupted:
        raise
    except (VirtbackupError, libvirt.libvirtError) as err:
        warning = f"trim failed, backing up untrimmed: {err}"
        steps.warning(name, warning)
        return TrimOutcome(False, warnings=(warning,))


def _trim(conn: Any, plan: DomainPlan, steps: StepSink) -> TrimOutcome:
    name = plan.domain.name
    dom = conn.lookupByName(name)
    xml = hv.live_xml(dom)
    live = hv.disks_of(xml)
    targets = [d.disk.target for d in plan.backed_up]
    disks = [live.get(target, d.disk) for target, d in zip(targets, plan.backed_up, strict=True)]
    decision = plan_trim(name, hv.state(dom), has_agent_channel(xml), agent_connected(xml), disks)
    for warning in decision.warnings:
        steps.warning(name, warning)
    if not decision.trim:
        if decision.note:
            steps.step(name, decision.note)
        return TrimOutcome(False, warnings=decision.warnings)
    before = _allocations(disks)
    steps.step(name, "trimming the guest filesystems through the guest agent")
    fstrim(dom)
    after = _allocations(disks)
    measured = [t for t in before if t in after]
    if not measured:
        steps.step(name, "trimmed (block devices: space freed is not measured)")
        return TrimOutcome(True, None, decision.warnings)
    reclaimed = sum(max(0, before[t] - after[t]) for t in measured)
    steps.step(
        name,
        f"trimmed: {reclaimed / MiB:.1f} MiB freed in the host images of {', '.join(measured)}",
    )
    return TrimOutcome(True, reclaimed, decision.warnings)


def _allocations(disks: Sequence[DiskFacts]) -> dict[str, int]:
    """Bytes each regular image file occupies on the host (block devices left out)."""
    sizes = {}
    for disk in disks:
        if disk.path is None:
            continue
        try:
            st = os.stat(disk.path)
        except OSError as err:
            log.debug("cannot stat %s: %s", disk.path, err)
            continue
        if stat.S_ISREG(st.st_mode):
            sizes[disk.target] = st.st_blocks * 512
    return sizes
