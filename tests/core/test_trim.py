"""Whether --trim asks the guest agent, and what it tells the user when it does not."""

import pytest

from virtbackup.core.model import DiskFacts, DomainState
from virtbackup.core.trim import plan_trim


def disk(target: str, discard: str | None) -> DiskFacts:
    return DiskFacts(target, "disk", "file", f"/img/{target}", "qcow2", discard=discard)


UNMAP = disk("vda", "unmap")
IGNORE = disk("vdb", "ignore")
UNSET = disk("vdc", None)


@pytest.mark.parametrize(
    ("state", "channel", "connected", "disks", "trim", "warnings", "note"),
    [
        (DomainState.RUNNING, True, True, [UNMAP], True, [], None),
        (
            DomainState.RUNNING,
            True,
            True,
            [UNMAP, IGNORE],
            True,
            ["trim cannot free space in the images of vdb (no discard='unmap'; "],
            None,
        ),
        (
            DomainState.RUNNING,
            True,
            True,
            [IGNORE, UNSET],
            False,
            ["trim skipped: vdb, vdc of web1 do not pass discards to the host"],
            None,
        ),
        (
            DomainState.RUNNING,
            False,
            False,
            [UNMAP],
            False,
            ["trim skipped: web1 has no guest agent channel"],
            None,
        ),
        (
            DomainState.RUNNING,
            True,
            False,
            [UNMAP],
            False,
            ["trim skipped: no guest agent connected in web1"],
            None,
        ),
        # Not running: nothing to ask, and nothing the nightly summary must warn about.
        (DomainState.SHUTOFF, True, False, [UNMAP], False, [], "no trim: web1 is shut off"),
        (DomainState.PAUSED, True, True, [UNMAP], False, [], "no trim: web1 is paused"),
    ],
)
def test_plan_trim(
    state: DomainState,
    channel: bool,
    connected: bool,
    disks: list[DiskFacts],
    trim: bool,
    warnings: list[str],
    note: str | None,
) -> None:
    plan = plan_trim("web1", state, channel, connected, disks)
    assert plan.trim == trim
    assert len(plan.warnings) == len(warnings)
    for got, start in zip(plan.warnings, warnings, strict=True):
        assert got.startswith(start), got
    assert plan.note == note
