"""Whether to ask a guest to trim its filesystems before its backup: pure decisions.

A trim (the guest agent's fstrim) frees, inside the guest, the blocks of deleted files.
It reaches the host image only through a disk whose driver has discard='unmap': qemu
then punches holes into the image file (or discards on the block device), and the
backup neither reads nor stores those blocks. Without that passthrough qemu drops the
discards and the trim changes nothing on the host, so it is skipped with a note.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from virtbackup.core.model import DiskFacts, DomainState

DISCARD_PASSTHROUGH = "unmap"
DOCTOR_HINT = "'virtbackup doctor' shows the fix"


@dataclass(frozen=True)
class TrimPlan:
    trim: bool  # ask the guest agent to trim
    warnings: tuple[str, ...] = ()  # asked for and not (fully) possible: the user must know
    note: str | None = None  # why nothing is done, when that is no problem (not running)


def passes_discards(disk: DiskFacts) -> bool:
    return disk.discard == DISCARD_PASSTHROUGH


def plan_trim(
    domain: str,
    state: DomainState,
    has_channel: bool,
    agent_connected: bool,
    disks: Sequence[DiskFacts],
) -> TrimPlan:
    """`disks`: the disks to back up, as the live domain XML has them."""
    if state != DomainState.RUNNING:
        return TrimPlan(False, note=f"no trim: {domain} is {state.value}")
    if not has_channel:
        return TrimPlan(
            False, (f"trim skipped: {domain} has no guest agent channel ({DOCTOR_HINT})",)
        )
    if not agent_connected:
        return TrimPlan(
            False,
            (
                f"trim skipped: no guest agent connected in {domain} "
                "(install and start qemu-guest-agent in the guest)",
            ),
        )
    without = [disk.target for disk in disks if not passes_discards(disk)]
    if len(without) == len(disks):
        names = ", ".join(without) or "no disk"
        return TrimPlan(
            False,
            (
                f"trim skipped: {names} of {domain} do not pass discards to the host "
                f"(no discard='unmap'; {DOCTOR_HINT})",
            ),
        )
    if without:
        return TrimPlan(
            True,
            (
                f"trim cannot free space in the images of {', '.join(without)} "
                f"(no discard='unmap'; {DOCTOR_HINT})",
            ),
        )
    return TrimPlan(True)
