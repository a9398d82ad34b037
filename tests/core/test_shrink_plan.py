"""core/shrink_plan: which domains and disks shrink may touch, names for --ignore."""

from pathlib import Path

import pytest

from virtbackup.core.errors import UsageError
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState
from virtbackup.core.shrink_plan import (
    ShrinkMode,
    ShrinkOptions,
    check_options,
    compat_problem,
    guest_name,
    is_ignored,
    names_of,
    plan_shrink,
    vg_ignored,
)

MiB = 1024 * 1024


def disk(target: str = "vda", **kw: object) -> DiskFacts:
    values: dict[str, object] = {
        "target": target,
        "device": "disk",
        "source_type": "file",
        "path": f"/img/{target}.qcow2",
        "format": "qcow2",
        "virtual_size": 64 * MiB,
        "allocated": 10 * MiB,
    }
    values.update(kw)
    return DiskFacts(**values)  # type: ignore[arg-type]


def domain(
    state: DomainState = DomainState.SHUTOFF, *disks: DiskFacts, **kw: object
) -> DomainFacts:
    return DomainFacts(
        name="web1",
        uuid="u",
        state=state,
        persistent=bool(kw.get("persistent", True)),
        disks=disks or (disk(),),
    )


@pytest.mark.parametrize(
    ("state", "shutdown", "persistent", "eligible", "needs_shutdown", "reason"),
    [
        (DomainState.SHUTOFF, False, True, True, False, "shut off"),
        (DomainState.SHUTOFF, True, True, True, False, "shut off"),
        (
            DomainState.RUNNING,
            False,
            True,
            False,
            False,
            "running: shut it down first, or pass --shutdown",
        ),
        (DomainState.RUNNING, True, True, True, True, "shut down, shrunk, started again"),
        (DomainState.BLOCKED, True, True, True, True, "shut down, shrunk, started again"),
        (DomainState.RUNNING, True, False, False, False, "transient"),
        (DomainState.PAUSED, False, True, False, False, "paused"),
        (DomainState.PAUSED, True, True, False, False, "paused"),
        (DomainState.PMSUSPENDED, True, True, False, False, "pmsuspended: shrink needs a shut-off"),
        (DomainState.CRASHED, False, True, False, False, "crashed"),
        (DomainState.SHUTDOWN, True, True, False, False, "in shutdown"),
    ],
)
def test_domain_states(
    state: DomainState,
    shutdown: bool,
    persistent: bool,
    eligible: bool,
    needs_shutdown: bool,
    reason: str,
) -> None:
    plan = plan_shrink(domain(state, persistent=persistent), ShrinkOptions(shutdown=shutdown))
    assert plan.eligible is eligible
    assert plan.needs_shutdown is needs_shutdown
    assert reason in plan.reason


def test_disks_chosen_and_why_not() -> None:
    facts = domain(
        DomainState.SHUTOFF,
        disk("vda"),
        disk("vdb", format="raw", allocated=5 * MiB),
        disk("hdc", device="cdrom", format="raw"),
        disk("vdc", readonly=True),
        disk("vdd", shareable=True),
        disk("vde", source_type="network", path=None),
        disk("vdf", format="vmdk"),
        disk("vdg", probe_error="cannot inspect /img/vdg: gone"),
    )
    plan = plan_shrink(facts, ShrinkOptions())
    assert [d.target for d in plan.chosen] == ["vda", "vdb"]
    assert plan.allocated == 15 * MiB
    reasons = {d.disk.target: d.reason for d in plan.disks if not d.shrink}
    assert reasons == {
        "hdc": "cdrom: not a disk image",
        "vdc": "read-only for the guest: left alone",
        "vdd": "shareable: another domain may use it, left alone",
        "vde": "network disks are not supported yet",
        "vdf": "vmdk images cannot be shrunk in place: use --convert",
        "vdg": "cannot inspect /img/vdg: gone",
    }
    # Copy mode reads any format qemu-img knows.
    copy = plan_shrink(facts, ShrinkOptions(to_dir=Path("/out")))
    assert "vdf" in [d.target for d in copy.chosen]


def test_no_disk_to_shrink() -> None:
    plan = plan_shrink(domain(DomainState.SHUTOFF, disk(device="cdrom")), ShrinkOptions())
    assert not plan.eligible and plan.reason == "no disk to shrink"


def test_modes_and_option_checks() -> None:
    assert ShrinkOptions().mode is ShrinkMode.IN_PLACE
    assert ShrinkOptions(to_dir=Path("/x")).mode is ShrinkMode.COPY
    assert ShrinkOptions(convert="qcow2").mode is ShrinkMode.COPY
    check_options(ShrinkOptions(convert="qcow2", compress=True))
    with pytest.raises(UsageError, match="--compress needs copy mode"):
        check_options(ShrinkOptions(compress=True))
    with pytest.raises(UsageError, match="--compress needs qcow2 output"):
        check_options(ShrinkOptions(convert="raw", compress=True))
    with pytest.raises(UsageError, match="unsupported output format"):
        check_options(ShrinkOptions(convert="vdi"))


def test_compat_problem() -> None:
    in_place, copy = ShrinkMode.IN_PLACE, ShrinkMode.COPY
    assert compat_problem("/i.qcow2", "1.1", True, in_place, False) is None
    assert compat_problem("/i.qcow2", None, True, in_place, False) is None
    # A version 2 image without a backing file frees discarded clusters: fine.
    assert compat_problem("/i.qcow2", "0.10", False, in_place, False) is None
    assert compat_problem("/i.qcow2", "0.10", True, in_place, True) is None  # amended first
    assert compat_problem("/i.qcow2", "0.10", True, copy, False) is None  # our own overlay
    problem = compat_problem("/i.qcow2", "0.10", True, in_place, False)
    assert problem is not None
    assert "qemu-img amend -f qcow2 -o compat=1.1 /i.qcow2" in problem
    assert "--amend-compat" in problem and "copy mode" in problem


@pytest.mark.parametrize(
    ("device", "targets", "name"),
    [
        ("/dev/sda1", ["vda", "vdb"], "vda1"),
        ("/dev/sdb", ["vda", "vdb"], "vdb"),
        ("/dev/sdb2", ["vda", "sdc"], "sdc2"),
        ("/dev/sdc1", ["vda"], "/dev/sdc1"),  # not one of ours: unchanged
        ("/dev/vg0/root", ["vda"], "/dev/vg0/root"),
        ("/dev/sdaa1", [f"vd{i}" for i in range(27)], "vd261"),
    ],
)
def test_guest_name(device: str, targets: list[str], name: str) -> None:
    assert guest_name(device, targets) == name


def test_ignore_spellings() -> None:
    targets = ["vda", "vdb"]
    assert {"/dev/sdb2", "sdb2", "vdb2", "/dev/vdb2"} <= names_of("/dev/sdb2", targets)
    for spelling in ("/dev/sdb2", "sdb2", "vdb2", "/dev/vdb2"):
        assert is_ignored("/dev/sdb2", targets, [spelling])
    assert not is_ignored("/dev/sdb2", targets, ["vda2", "vdb"])
    for spelling in ("/dev/vg-x/my-lv", "vg-x/my-lv", "/dev/mapper/vg--x-my--lv"):
        assert is_ignored("/dev/vg-x/my-lv", targets, [spelling])
    assert vg_ignored("vg0", ["vg0"]) and vg_ignored("vg0", ["/dev/vg0/"])
    assert not vg_ignored("vg0", ["vg0/root"])
