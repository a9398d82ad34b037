"""The planner: method per domain, verdict per disk, selection of domains."""

from dataclasses import replace

import pytest

from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.planning import (
    PlanOptions,
    UnknownDomain,
    close_matches,
    plan_domain,
    select_domains,
)

S = DomainState
M = Method

QCOW2 = DiskFacts("vda", "disk", "file", "/img/a.qcow2", "qcow2", virtual_size=1, allocated=1)
RAW = DiskFacts("vdb", "disk", "block", "/dev/loop0", "raw")
RAW_FILE = DiskFacts("vdb", "disk", "file", "/img/b.raw", "raw")
ON_LV = replace(RAW, on_lv=True)
NET = DiskFacts("vdc", "disk", "network", None, "raw", network="iscsi://h:3260/iqn.x/1")


def domain(state: S = S.RUNNING, *disks: DiskFacts, persistent: bool = True) -> DomainFacts:
    return DomainFacts("vm", "uuid", state, persistent, disks or (QCOW2,))


# -- method per domain -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "method", "reason_part"),
    [
        (S.SHUTOFF, M.OFFLINE, "shut off"),
        (S.RUNNING, M.SNAPSHOT, "external snapshot"),
        (S.BLOCKED, M.SNAPSHOT, "external snapshot"),
        (S.PAUSED, M.SNAPSHOT, "stays paused"),
        (S.PMSUSPENDED, M.SNAPSHOT, "stays suspended"),
        (S.SHUTDOWN, None, "run again when it is shut off"),
        (S.CRASHED, None, "unknown state"),
        (S.NOSTATE, None, "libvirt does not say"),
    ],
)
def test_auto_method_by_state(state: S, method: M | None, reason_part: str) -> None:
    plan = plan_domain(domain(state))
    assert plan.method == method
    assert reason_part in plan.reason
    assert plan.reason.startswith("auto: ") or method is None
    assert [d.backup for d in plan.disks] == [method is not None]


@pytest.mark.parametrize(
    ("on_lv", "state", "method"),
    [
        ((True, True), S.RUNNING, M.LVM),
        ((True, True), S.PAUSED, M.LVM),
        ((True, None), S.RUNNING, M.SNAPSHOT),  # unknown is not yes
        ((True, False), S.RUNNING, M.SNAPSHOT),
        ((None, None), S.RUNNING, M.SNAPSHOT),
        ((True, True), S.SHUTOFF, M.OFFLINE),  # nothing beats reading a stopped image
    ],
)
def test_auto_picks_lvm_only_when_every_disk_is_known_on_lv(
    on_lv: tuple[bool | None, bool | None], state: S, method: M
) -> None:
    disks = (replace(QCOW2, on_lv=on_lv[0]), replace(RAW, on_lv=on_lv[1]))
    assert plan_domain(domain(state, *disks)).method == method


def test_disks_not_backed_up_do_not_count_for_lvm() -> None:
    cdrom = DiskFacts("hdc", "cdrom", "file", "/iso/x.iso", "raw", on_lv=False)
    plan = plan_domain(domain(S.RUNNING, replace(QCOW2, on_lv=True), cdrom))
    assert plan.method == M.LVM


@pytest.mark.parametrize(
    ("state", "asked", "method", "reason_part"),
    [
        # a shut-off domain is read directly whatever was asked
        (S.SHUTOFF, M.OFFLINE, M.OFFLINE, "offline: shut off"),
        (S.SHUTOFF, M.SNAPSHOT, M.OFFLINE, "snapshot asked, but it is shut off"),
        (S.SHUTOFF, M.SHUTDOWN, M.OFFLINE, "shutdown asked, but it is shut off"),
        (S.SHUTOFF, M.LVM, M.OFFLINE, "lvm asked"),
        # offline needs a stopped domain
        (S.RUNNING, M.OFFLINE, None, "offline needs a shut-off domain"),
        (S.PAUSED, M.OFFLINE, None, "it is paused"),
        (S.RUNNING, M.SNAPSHOT, M.SNAPSHOT, "snapshot: running"),
        (S.PAUSED, M.SNAPSHOT, M.SNAPSHOT, "snapshot: paused"),
        (S.CRASHED, M.SNAPSHOT, M.SNAPSHOT, "snapshot: crashed"),
        (S.SHUTDOWN, M.SNAPSHOT, None, "needs a running or paused domain"),
        (S.NOSTATE, M.SNAPSHOT, None, "needs a running or paused domain"),
        (S.RUNNING, M.SHUTDOWN, M.SHUTDOWN, "shut down, read directly, started again"),
        (S.BLOCKED, M.SHUTDOWN, M.SHUTDOWN, "started again"),
        (S.PAUSED, M.SHUTDOWN, None, "cannot react"),
        (S.PMSUSPENDED, M.SHUTDOWN, None, "cannot react"),
        (S.RUNNING, M.LVM, M.LVM, "checked at backup"),
    ],
)
def test_asked_method(state: S, asked: M, method: M | None, reason_part: str) -> None:
    plan = plan_domain(domain(state), PlanOptions(method=asked))
    assert plan.method == method
    assert reason_part in plan.reason


def test_shutdown_of_a_transient_domain_is_refused() -> None:
    plan = plan_domain(domain(S.RUNNING, persistent=False), PlanOptions(method=M.SHUTDOWN))
    assert plan.method is None
    assert "transient" in plan.reason


def test_lvm_asked_but_a_disk_is_not_on_lvm() -> None:
    disks = (replace(QCOW2, on_lv=True), replace(RAW, on_lv=False))
    plan = plan_domain(domain(S.RUNNING, *disks), PlanOptions(method=M.LVM))
    assert plan.method is None
    assert "vdb not on LVM" in plan.reason


def test_lvm_asked_and_known() -> None:
    disks = (replace(QCOW2, on_lv=True),)
    plan = plan_domain(domain(S.RUNNING, *disks), PlanOptions(method=M.LVM))
    assert (plan.method, plan.reason) == (M.LVM, "lvm: running, every disk is on LVM")


def test_snapshot_of_a_transient_domain_is_fine() -> None:
    assert plan_domain(domain(S.RUNNING, persistent=False)).method == M.SNAPSHOT


# -- verdict per disk --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disk", "backup", "warning", "reason_part"),
    [
        (QCOW2, True, False, "copied while an external snapshot"),
        (RAW, True, False, "copied while an external snapshot"),
        (replace(QCOW2, source_type="volume", pool="p", volume="v"), True, False, "snapshot"),
        (DiskFacts("hdc", "cdrom", "file", "/iso/x.iso", "raw"), False, False, "removable media"),
        (DiskFacts("hdd", "cdrom", "file", None, None), False, False, "removable media (cdrom)"),
        (DiskFacts("fda", "floppy", "file", "/f.img", "raw"), False, False, "(floppy)"),
        (
            DiskFacts("vdc", "disk", "network", None, "raw", network="nbd://h:1/e"),
            True,
            False,
            "network disk (nbd://h:1/e), read over NBD from libvirt's backup job",
        ),
        (DiskFacts("sda", "lun", "block", "/dev/sdz", "raw"), False, False, "SCSI passthrough"),
        (DiskFacts("vdd", "disk", "file", None, "raw"), False, False, "no source"),
        (DiskFacts("vde", "disk", "nvme", None, "raw"), False, True, "nvme disks are not"),
        (DiskFacts("vdf", "disk", "dir", "/srv/fat", None), False, True, "dir disks are not"),
        (
            replace(QCOW2, shareable=True),
            True,
            True,
            "consistency cannot be guaranteed",
        ),
        (replace(QCOW2, readonly=True), True, False, "read-only for the guest"),
        (
            replace(QCOW2, probe_error="cannot inspect /img/a.qcow2: No such file or directory"),
            False,
            True,
            "No such file",
        ),
        (
            DiskFacts(
                "vdg",
                "disk",
                "volume",
                None,
                "qcow2",
                pool="p",
                volume="v",
                probe_error="storage pool 'p' is not active",
            ),
            False,
            True,
            "not active",
        ),
    ],
)
def test_disk_verdicts(disk: DiskFacts, backup: bool, warning: bool, reason_part: str) -> None:
    plan = plan_domain(domain(S.RUNNING, QCOW2, disk))
    verdict = plan.disks[1]
    assert verdict.disk == disk
    assert (verdict.backup, verdict.warning) == (backup, warning)
    assert reason_part in verdict.reason


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (S.SHUTOFF, "read directly, the domain is shut off"),
        (S.RUNNING, "copied while an external snapshot takes the writes"),
    ],
)
def test_disk_reason_follows_the_method(state: S, reason: str) -> None:
    assert plan_domain(domain(state)).disks[0].reason == reason


def test_disks_of_a_domain_not_backed_up_say_so() -> None:
    cdrom = DiskFacts("hdc", "cdrom", "file", None, None)
    plan = plan_domain(domain(S.CRASHED, QCOW2, cdrom))
    assert [(d.backup, d.reason) for d in plan.disks] == [
        (False, "the domain is not backed up"),
        (False, "removable media (cdrom)"),
    ]
    assert plan.backed_up == ()


def test_domain_without_disks_to_back_up() -> None:
    cdrom = DiskFacts("hdc", "cdrom", "file", "/iso/x.iso", "raw")
    plan = plan_domain(domain(S.RUNNING, cdrom))
    assert (plan.method, plan.reason) == (None, "no disk to back up")
    empty = plan_domain(DomainFacts("vm", "u", S.RUNNING, True, ()))
    assert (empty.method, empty.reason, empty.disks) == (None, "no disks", ())


def test_warnings_and_backed_up_views() -> None:
    shared = replace(RAW, shareable=True)
    net = DiskFacts("vdc", "disk", "network", None, "raw")
    plan = plan_domain(domain(S.RUNNING, QCOW2, shared, net))
    assert [d.disk.target for d in plan.backed_up] == ["vda", "vdb"]
    assert [d.disk.target for d in plan.warnings] == ["vdb"]


# -- selection ---------------------------------------------------------------------------

HOST = ["web1", "web2", "db", "mail spaß", "Web3"]


@pytest.mark.parametrize(
    ("names", "include", "exclude", "expected"),
    [
        ((), (), (), ["Web3", "db", "mail spaß", "web1", "web2"]),
        (("db", "web1"), (), (), ["db", "web1"]),
        (("web1", "web1"), (), (), ["web1"]),
        ((), ("web*",), (), ["web1", "web2"]),  # globs are case-sensitive, like names
        ((), ("web*", "db"), ("web2",), ["db", "web1"]),
        ((), (), ("*",), []),
        (("mail spaß",), (), (), ["mail spaß"]),
        ((), ("mail *",), (), ["mail spaß"]),
    ],
)
def test_select_domains(
    names: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...], expected: list[str]
) -> None:
    assert select_domains(HOST, names, include, exclude) == expected


def test_unknown_domain_lists_close_matches() -> None:
    with pytest.raises(UnknownDomain) as caught:
        select_domains(HOST, ["web", "db", "zzz"])
    message = str(caught.value)
    assert "unknown domain 'web' (did you mean 'web1' or 'web2' or 'Web3'?)" in message
    assert "unknown domain 'zzz'" in message
    assert "'db'" not in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("WEB1", ["web1"]),
        ("mail spass", ["mail spaß"]),
        ("dbb", ["db"]),
        ("nothing-like-it", []),
    ],
)
def test_close_matches(name: str, expected: list[str]) -> None:
    assert close_matches(name, HOST)[: len(expected) or None] == expected


def test_excluded_disks_are_left_out_with_their_reason() -> None:
    facts = DomainFacts(
        name="db",
        uuid="u",
        state=DomainState.SHUTOFF,
        persistent=True,
        disks=(
            DiskFacts("vda", "disk", "file", "/i/a.qcow2", "qcow2"),
            DiskFacts("vdb", "disk", "file", "/i/b.raw", "raw"),
        ),
    )
    plan = plan_domain(facts, PlanOptions(exclude_disks=("vdb",)))
    assert [d.disk.target for d in plan.backed_up] == ["vda"]
    assert plan.disks[1].reason == "excluded by configuration"
    only_excluded = plan_domain(facts, PlanOptions(exclude_disks=("vda", "vdb")))
    assert only_excluded.method is None and only_excluded.reason == "no disk to back up"


def test_disks_whose_data_is_missed_are_left_out_unless_excluded() -> None:
    net = DiskFacts("vda", "disk", "network", None, "raw", network="nbd://h:1/e")
    lun = DiskFacts("sda", "lun", "block", "/dev/sdz", "raw")
    nvme = DiskFacts("vdc", "disk", "nvme", None, "raw")
    cdrom = DiskFacts("hdc", "cdrom", "file", "/iso/x.iso", "raw")
    empty = DiskFacts("vdd", "disk", "file", None, "raw")
    file_disk = replace(RAW, target="vdb")
    facts = domain(S.SHUTOFF, net, file_disk, lun, nvme, cdrom, empty)
    plan = plan_domain(facts)
    assert [d.disk.target for d in plan.left_out] == ["vda", "sda", "vdc"]
    assert [d.disk.target for d in plan.backed_up] == ["vdb"]
    excluded = plan_domain(facts, PlanOptions(exclude_disks=("vda", "sda", "vdc")))
    assert excluded.left_out == ()
    assert [d.reason for d in excluded.disks[:1]] == ["excluded by configuration"]
    only_net = plan_domain(domain(S.SHUTOFF, net))
    assert only_net.method is None and [d.disk.target for d in only_net.left_out] == ["vda"]


def test_an_image_with_data_in_other_files_is_left_out() -> None:
    why = "its vmdk image keeps its data in extent files (d-flat.vmdk): convert it to qcow2 or raw"
    flat = DiskFacts("vdc", "disk", "file", "/img/d.vmdk", "vmdk", data_elsewhere=why)
    plan = plan_domain(domain(S.SHUTOFF, RAW, flat))
    assert [(d.disk.target, d.reason, d.warning) for d in plan.left_out] == [("vdc", why, True)]
    assert [d.disk.target for d in plan.backed_up] == ["vdb"]


def test_an_unreadable_disk_fails_the_backup_unless_excluded() -> None:
    gone = replace(QCOW2, target="vdb", probe_error="cannot inspect /img/b.qcow2: gone")
    plan = plan_domain(domain(S.RUNNING, QCOW2, gone))
    assert [d.disk.target for d in plan.unreadable] == ["vdb"]
    assert plan.unreadable[0].reason == "cannot inspect /img/b.qcow2: gone"
    assert plan.method == M.SNAPSHOT  # what the readable disks would get, shown by list
    excluded = plan_domain(domain(S.RUNNING, QCOW2, gone), PlanOptions(exclude_disks=("vdb",)))
    assert excluded.unreadable == ()


def test_a_domain_whose_every_data_disk_is_left_out_is_incomplete_not_skipped() -> None:
    lun = DiskFacts("sda", "lun", "block", "/dev/sdz", "raw")
    only_lun = plan_domain(domain(S.RUNNING, lun))
    assert only_lun.method is None and only_lun.nothing_but_left_out
    crashed = plan_domain(domain(S.CRASHED, QCOW2, lun))
    assert crashed.method is None and not crashed.nothing_but_left_out  # skipped: its state
    excluded = plan_domain(domain(S.RUNNING, QCOW2, lun), PlanOptions(exclude_disks=("vda",)))
    assert [d.disk.target for d in excluded.excluded] == ["vda"]
    assert excluded.nothing_but_left_out


# -- the backup API ----------------------------------------------------------------------

API = PlanOptions(backup_api=True)


@pytest.mark.parametrize(
    ("state", "disks", "options", "method", "reason_part"),
    [
        (S.RUNNING, (QCOW2,), API, M.BACKUP_API, "only what changed"),
        (S.PAUSED, (QCOW2,), API, M.BACKUP_API, "stays paused"),
        (S.RUNNING, (QCOW2,), PlanOptions(), M.SNAPSHOT, "external snapshot"),  # stream layout
        (S.RUNNING, (QCOW2, RAW_FILE), API, M.SNAPSHOT, "everything is read: vdb not a qcow2"),
        (S.RUNNING, (QCOW2, RAW), API, M.BACKUP_API, "vdb a block device: libvirt's backup"),
        (S.RUNNING, (QCOW2, RAW), API, M.BACKUP_API, "read in full: vdb not a qcow2 file"),
        (S.RUNNING, (ON_LV,), API, M.LVM, "every disk is on LVM"),
        (S.RUNNING, (QCOW2, NET), API, M.BACKUP_API, "vdc on the network: libvirt's backup"),
        (S.PAUSED, (NET,), PlanOptions(), M.BACKUP_API, "read in full: vdc not a qcow2"),
        (S.PMSUSPENDED, (QCOW2,), API, M.SNAPSHOT, "stays suspended"),
        (S.SHUTOFF, (QCOW2,), API, M.OFFLINE, "shut off"),
    ],
)
def test_auto_prefers_the_backup_api_for_qcow2_files_in_the_repository_layout(
    state: S, disks: tuple[DiskFacts, ...], options: PlanOptions, method: M, reason_part: str
) -> None:
    plan = plan_domain(domain(state, *disks), options)
    assert plan.method == method and reason_part in plan.reason


@pytest.mark.parametrize(
    ("state", "disks", "method", "reason_part"),
    [
        (S.RUNNING, (QCOW2,), M.BACKUP_API, "read over NBD"),
        (S.RUNNING, (QCOW2, RAW), M.BACKUP_API, "read in full: vdb not a qcow2 file (convert"),
        (S.RUNNING, (NET,), M.BACKUP_API, "read over NBD"),
        (S.PMSUSPENDED, (QCOW2,), None, "needs a running or paused domain"),
        (S.SHUTOFF, (QCOW2,), M.OFFLINE, "read directly"),
    ],
)
def test_backup_api_asked(
    state: S, disks: tuple[DiskFacts, ...], method: M | None, reason_part: str
) -> None:
    plan = plan_domain(domain(state, *disks), PlanOptions(method=M.BACKUP_API))
    assert plan.method == method and reason_part in plan.reason


@pytest.mark.parametrize(
    ("state", "method", "reason_part"),
    [
        (S.SHUTOFF, None, "start the domain to back it up"),
        (S.PMSUSPENDED, None, "it is pmsuspended: the backup API needs a running or paused"),
        (S.RUNNING, M.SNAPSHOT, "use --method backup-api (or auto)"),
    ],
)
def test_a_network_disk_is_left_out_where_qemu_cannot_serve_it(
    state: S, method: M | None, reason_part: str
) -> None:
    options = PlanOptions(method=method or M.AUTO)
    plan = plan_domain(domain(state, QCOW2, NET), options)
    (left_out,) = plan.left_out
    assert left_out.disk == NET and reason_part in left_out.reason
    assert "read through the running domain's qemu only" in left_out.reason
    assert [d.disk.target for d in plan.backed_up] == ["vda"]
    # a domain with nothing but that disk is incomplete, not backed up with no disk
    alone = plan_domain(domain(state, NET), options)
    assert alone.method is None and alone.nothing_but_left_out


def test_the_backup_api_reads_a_qcow2_on_the_network_incrementally() -> None:
    plan = plan_domain(domain(S.RUNNING, replace(NET, format="qcow2")))
    assert plan.method == M.BACKUP_API and "read in full" not in plan.reason
    assert plan.disks[0].reason.endswith("only what changed since the last backup")


def test_without_the_backup_api_network_disks_are_left_out_and_auto_takes_a_snapshot() -> None:
    old = replace(domain(S.RUNNING, QCOW2, NET), offers_backup_api=False)
    plan = plan_domain(old, PlanOptions(backup_api=True))
    assert plan.method == M.SNAPSHOT
    (left_out,) = plan.left_out
    assert left_out.disk == NET
    assert "libvirt here does not offer the backup API" in left_out.reason
    assert "back the volume up on the storage side" in left_out.reason
    asked = plan_domain(old, PlanOptions(method=M.BACKUP_API))
    assert asked.method is None and "libvirt here does not offer the backup API" in asked.reason
    alone = plan_domain(replace(old, disks=(NET,)))
    assert alone.method is None and alone.nothing_but_left_out
