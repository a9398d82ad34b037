"""`--trim`: let a running guest free its deleted blocks just before the backup window.

The guest agent trims every mounted filesystem (libvirt's FSTrim); through disks with
discard='unmap' qemu punches the freed blocks out of the host images, so the backup
reads and stores less. What the host images shrank by (st_blocks before and after) is
reported; a trim that cannot help (no agent, no discard passthrough) is skipped with a
note, and a trim that fails never fails the backup.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import disks_of
from virtbackup.adapters.images import allocated_bytes
from virtbackup.core.agent_channel import agent_connected, has_agent_channel
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


def trim_before_backup(hypervisor: Hypervisor, plan: DomainPlan, steps: StepSink) -> TrimOutcome:
    """Trim the guest of `plan` if it runs, has an agent and passes discards to the host."""
    name = plan.domain.name
    try:
        return _trim(hypervisor, plan, steps)
    except Interrupted:
        raise
    except VirtbackupError as err:
        warning = f"trim failed, backing up untrimmed: {err}"
        steps.warning(name, warning)
        return TrimOutcome(False, warnings=(warning,))


def _trim(hypervisor: Hypervisor, plan: DomainPlan, steps: StepSink) -> TrimOutcome:
    name = plan.domain.name
    dom = hypervisor.find(plan.domain.uuid)  # the planned domain, not a namesake
    if dom is None:
        return TrimOutcome(False)  # gone: its method reports it
    xml = dom.live_xml()
    live = disks_of(xml)
    targets = [d.disk.target for d in plan.backed_up]
    disks = [live.get(target, d.disk) for target, d in zip(targets, plan.backed_up, strict=True)]
    decision = plan_trim(name, dom.state(), has_agent_channel(xml), agent_connected(xml), disks)
    for warning in decision.warnings:
        steps.warning(name, warning)
    if not decision.trim:
        if decision.note:
            steps.step(name, decision.note)
        return TrimOutcome(False, warnings=decision.warnings)
    before = _allocations(disks)
    steps.step(name, "trimming the guest filesystems through the guest agent")
    dom.fstrim()
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
            held = allocated_bytes(disk.path)
        except OSError as err:
            log.debug("cannot stat %s: %s", disk.path, err)
            continue
        if held is not None:
            sizes[disk.target] = held
    return sizes
