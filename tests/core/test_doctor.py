"""The doctor's checks: facts in, findings (severity, subject, text, fix) out."""

from dataclasses import replace

import pytest

from virtbackup.core.config import SnapshotSize
from virtbackup.core.doctor import blocks_backups, diagnose, expected_size
from virtbackup.core.doctor_domain import domain_findings
from virtbackup.core.doctor_facts import (
    AgentState,
    DestFacts,
    DiskCheck,
    DomainCheck,
    Finding,
    HostFacts,
    OffsiteFacts,
    ProgramFact,
    Settings,
    Severity,
    Subject,
    VolumeGroupFacts,
)
from virtbackup.core.doctor_host import host_findings
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.planning import PlanOptions, plan_domain

MiB = 1024 * 1024
GiB = 1024 * MiB

VDA = DiskFacts(
    "vda", "disk", "file", "/img/web1.qcow2", "qcow2", allocated=3 * GiB, discard="unmap"
)
PROGRAMS = (
    ProgramFact("qemu-img", "/usr/bin/qemu-img", "qemu-utils"),
    ProgramFact("lz4", "/usr/bin/lz4", "lz4"),
    ProgramFact("lvcreate", "/sbin/lvcreate", "lvm2"),
)
HEALTHY_HOST = HostFacts(
    "qemu:///system",
    programs=PROGRAMS,
    guestfs_checked=True,
    dest=DestFacts("/backup", free=100 * GiB),
    lvm_checked=True,
)


def check(
    *disks: DiskFacts,
    state: DomainState = DomainState.RUNNING,
    agent: AgentState = AgentState.ANSWERING,
    method: Method = Method.AUTO,
    **disk_facts: object,
) -> DomainCheck:
    facts = DomainFacts("web1", "uuid-1", state, True, disks or (VDA,), has_agent_channel=True)
    plan = plan_domain(facts, PlanOptions(method=method))
    backed_up = {d.disk.target for d in plan.backed_up}
    return DomainCheck(
        plan,
        agent,
        None,
        tuple(
            DiskCheck(d, d.target in backed_up, **disk_facts)  # type: ignore[arg-type]
            for d in facts.disks
        ),
    )


def by_check(findings: list[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.check == kind]


def one(findings: list[Finding], kind: str) -> Finding:
    (finding,) = by_check(findings, kind)
    return finding


def test_a_healthy_host_and_domain_have_no_blocker_or_warning() -> None:
    findings = diagnose(HEALTHY_HOST, [check()])
    assert {f.severity for f in findings} == {Severity.INFO}
    assert not blocks_backups(findings)
    assert one(findings, "discard").fix == (
        "virsh domfstrim web1, or virtbackup backup --trim, or fstrim.timer in the guest"
    )
    assert one(findings, "discard").subject == Subject.DISK
    assert one(findings, "agent").subject == Subject.DOMAIN
    assert one(findings, "libvirt").subject == Subject.HOST


def test_unreachable_libvirtd_blocks() -> None:
    findings = host_findings(replace(HEALTHY_HOST, libvirt_error="no such socket"), 0)
    finding = one(findings, "libvirt")
    assert finding.severity == Severity.BLOCKER and "no such socket" in finding.text
    assert finding.fix is not None and "libvirtd -d" in finding.fix
    assert blocks_backups(findings)


@pytest.mark.parametrize(
    ("missing", "severity", "package"),
    [
        ("qemu-img", Severity.BLOCKER, "qemu-utils"),
        ("lz4", Severity.WARNING, "lz4"),
        ("lvcreate", Severity.INFO, "lvm2"),
    ],
)
def test_missing_programs(missing: str, severity: Severity, package: str) -> None:
    programs = tuple(replace(p, path=None) if p.name == missing else p for p in PROGRAMS)
    findings = host_findings(replace(HEALTHY_HOST, programs=programs), 0)
    (finding,) = [f for f in by_check(findings, "program") if missing in f.text]
    assert finding.severity == severity
    assert finding.fix == f"apt-get install {package}"


@pytest.mark.parametrize(
    ("dest", "expected", "severity", "words"),
    [
        (None, 0, Severity.INFO, "not checked"),
        (DestFacts("/b", "/b does not exist"), 0, Severity.BLOCKER, "/b does not exist"),
        (DestFacts("/b", free=2 * GiB), 3 * GiB, Severity.WARNING, "may not fit"),
        (DestFacts("/b", free=4 * GiB), 3 * GiB, Severity.INFO, "at most 3.0 GiB needed"),
    ],
)
def test_destination_space(
    dest: DestFacts | None, expected: int, severity: Severity, words: str
) -> None:
    finding = one(host_findings(replace(HEALTHY_HOST, dest=dest), expected), "dest")
    assert finding.severity == severity and words in finding.text


def test_expected_size_counts_the_disks_backed_up() -> None:
    cdrom = DiskFacts("hdc", "cdrom", "file", "/iso/x.iso", "raw", allocated=GiB)
    assert expected_size([check(VDA, cdrom)]) == 3 * GiB


@pytest.mark.parametrize(
    ("checked", "error", "severity"),
    [(False, None, Severity.INFO), (True, None, Severity.INFO), (True, "boom", Severity.WARNING)],
)
def test_guestfs(checked: bool, error: str | None, severity: Severity) -> None:
    host = replace(HEALTHY_HOST, guestfs_checked=checked, guestfs_error=error)
    assert one(host_findings(host, 0), "guestfs").severity == severity


@pytest.mark.parametrize(
    ("agent", "severity", "fix_words"),
    [
        (AgentState.NO_CHANNEL, Severity.WARNING, "org.qemu.guest_agent.0"),
        (AgentState.DISCONNECTED, Severity.WARNING, "apt-get install qemu-guest-agent"),
        (AgentState.SILENT, Severity.WARNING, "systemctl restart qemu-guest-agent"),
        (AgentState.NOT_RUNNING, Severity.INFO, None),
        (AgentState.ANSWERING, Severity.INFO, None),
    ],
)
def test_agent(agent: AgentState, severity: Severity, fix_words: str | None) -> None:
    finding = one(domain_findings(check(agent=agent)), "agent")
    assert finding.severity == severity
    if fix_words:
        assert finding.fix is not None and fix_words in finding.fix


@pytest.mark.parametrize("discard", [None, "ignore"])
def test_disk_without_discard_passthrough_gets_the_xml_fix(discard: str | None) -> None:
    finding = one(domain_findings(check(replace(VDA, discard=discard))), "discard")
    assert finding.severity == Severity.WARNING
    assert (finding.domain, finding.disk) == ("web1", "vda")
    assert finding.fix is not None
    assert "<driver name='qemu' type='qcow2' discard='unmap'/>" in finding.fix
    assert "virsh edit web1" in finding.fix and "virsh domfstrim web1" in finding.fix


def test_read_only_disks_need_no_discard() -> None:
    findings = domain_findings(check(replace(VDA, discard=None, readonly=True)))
    assert by_check(findings, "discard") == []


def test_qcow2_version_2_gets_the_amend_command() -> None:
    finding = one(domain_findings(check(qcow2_compat="0.10")), "qcow2-compat")
    assert finding.severity == Severity.WARNING
    assert finding.fix == (
        "with web1 shut off: qemu-img amend -f qcow2 -o compat=1.1 /img/web1.qcow2"
    )
    assert by_check(domain_findings(check(qcow2_compat="1.1")), "qcow2-compat") == []


def test_filesystem_without_hole_punching_warns() -> None:
    finding = one(domain_findings(check(punch_holes=False)), "punch-hole")
    assert finding.severity == Severity.WARNING and "ext4, xfs or btrfs" in (finding.fix or "")
    assert by_check(domain_findings(check(punch_holes=True)), "punch-hole") == []


@pytest.mark.parametrize(
    ("state", "fix"),
    [
        (DomainState.RUNNING, "virsh blockpull web1 vda --wait"),
        (DomainState.SHUTOFF, "qemu-img rebase -f qcow2 -b '' /img/web1.qcow2"),
    ],
)
def test_backing_chain_warns_with_the_flatten_command(state: DomainState, fix: str) -> None:
    chained = replace(VDA, backing_chain=("/img/base.raw",))
    finding = one(domain_findings(check(chained, state=state)), "backing-chain")
    assert finding.severity == Severity.WARNING and fix in (finding.fix or "")
    assert "/img/base.raw <- /img/web1.qcow2" in finding.text


def test_unreadable_disk_blocks() -> None:
    broken = replace(VDA, probe_error="No such file or directory")
    findings = domain_findings(check(broken))
    assert one(findings, "image").severity == Severity.BLOCKER
    assert blocks_backups(findings)


def test_a_disk_that_cannot_be_backed_up_blocks_until_excluded() -> None:
    nbd = DiskFacts("vdb", "disk", "network", None, "raw", network="nbd://h:10809/e")
    findings = domain_findings(check(VDA, nbd, state=DomainState.SHUTOFF))
    finding = one(findings, "left-out")
    assert finding.severity == Severity.BLOCKER and finding.subject == Subject.DISK
    assert "network disk (nbd://h:10809/e): read through the running domain's qemu" in finding.text
    assert "start the domain to back it up" in finding.text
    assert finding.fix is not None and 'exclude_disks = ["vdb"]' in finding.fix
    assert blocks_backups(findings)


def test_live_block_disk_without_overlay_dir_blocks_the_snapshot() -> None:
    block = DiskFacts("vda", "disk", "block", "/dev/sdb", "raw", discard="unmap", on_lv=False)
    findings = domain_findings(check(block))
    assert one(findings, "snapshot").severity == Severity.BLOCKER
    assert by_check(domain_findings(check(block), Settings(overlay_dir="/ov")), "snapshot") == []
    # shut off: read directly, no overlay needed
    assert by_check(domain_findings(check(block, state=DomainState.SHUTOFF)), "snapshot") == []


def test_too_little_room_for_the_overlay_blocks() -> None:
    finding = one(domain_findings(check(overlay_free=100 * MiB)), "snapshot")
    assert finding.severity == Severity.BLOCKER and "100.0 MiB free" in finding.text


@pytest.mark.parametrize(
    ("vg_free", "method", "severity"),
    [
        (1 * GiB, Method.LVM, Severity.BLOCKER),
        (1 * GiB, Method.SNAPSHOT, Severity.WARNING),
        (3 * GiB, Method.LVM, None),
    ],
)
def test_volume_group_free_space_for_lvm_snapshots(
    vg_free: int, method: Method, severity: Severity | None
) -> None:
    lv = VolumeGroupFacts("vg0", "vms", 20 * GiB, vg_free, 4 * MiB)
    settings = Settings(snapshot_size=SnapshotSize(percent=10.0))
    findings = domain_findings(check(method=method, volume_group=lv), settings)
    found = by_check(findings, "lvm")
    assert [f.severity for f in found] == ([severity] if severity else [])


def test_volume_group_check_uses_the_domains_own_snapshot_size() -> None:
    lv = VolumeGroupFacts("vg0", "vms", 20 * GiB, 3 * GiB, 4 * MiB)
    domain = check(method=Method.LVM, volume_group=lv)
    name = domain.plan.domain.name
    roomy = Settings(snapshot_size=SnapshotSize(percent=10.0))  # wants 2 GiB: fits
    assert by_check(domain_findings(domain, roomy), "lvm") == []
    overridden = replace(roomy, snapshot_sizes={name: SnapshotSize(percent=20.0)})  # 4 GiB
    (finding,) = by_check(domain_findings(domain, overridden), "lvm")
    assert finding.severity == Severity.BLOCKER and "wants 4.0 GiB" in finding.text
    other = replace(roomy, snapshot_sizes={"another": SnapshotSize(percent=20.0)})
    assert by_check(domain_findings(domain, other), "lvm") == []


def test_volume_group_check_wants_what_the_lvm_method_creates() -> None:
    # 10 % of 1000 MiB is 100 MiB; the method makes it whole 32 MiB extents: 128 MiB.
    lv = VolumeGroupFacts("vg0", "vms", 1000 * MiB, 110 * MiB, 32 * MiB)
    settings = Settings(snapshot_size=SnapshotSize(percent=10.0))
    (finding,) = by_check(
        domain_findings(check(method=Method.LVM, volume_group=lv), settings), "lvm"
    )
    assert finding.severity == Severity.BLOCKER and "wants 128.0 MiB" in finding.text


def test_encryption_and_remote_findings() -> None:
    fine = OffsiteFacts(recipients_file="/etc/r.txt", recipients=2, remote="offsite:vb")
    findings = host_findings(replace(HEALTHY_HOST, offsite=fine), 0)
    assert one(findings, "encrypt").severity == Severity.INFO
    assert "2 key(s) of /etc/r.txt" in one(findings, "encrypt").text
    assert one(findings, "remote").severity == Severity.INFO
    broken = replace(fine, encrypt_problem="malformed recipient", remote_problem="refused")
    findings = host_findings(replace(HEALTHY_HOST, offsite=broken), 0)
    assert one(findings, "encrypt").severity == Severity.BLOCKER
    assert one(findings, "remote").severity == Severity.BLOCKER
    assert "refused" in one(findings, "remote").text and blocks_backups(findings)
    assert not [f for f in host_findings(HEALTHY_HOST, 0) if f.check in ("encrypt", "remote")]
    assert not [
        f
        for f in host_findings(replace(HEALTHY_HOST, offsite=broken), 0)
        if f.check.startswith("remote-")
    ]  # a remote that does not answer: one finding


@pytest.mark.parametrize(
    ("offset", "problem", "severity", "words"),
    [
        (-3.0, None, Severity.INFO, "within 60 s of this host's (-3 s)"),
        (-600.0, None, Severity.WARNING, "600 s behind this host's"),
        (90.0, None, Severity.WARNING, "90 s ahead of this host's"),
        (None, "access denied", Severity.WARNING, "could not be compared"),
    ],
)
def test_the_remote_clock_finding(
    offset: float | None, problem: str | None, severity: Severity, words: str
) -> None:
    offsite = OffsiteFacts(remote="offsite:vb", clock_offset=offset, clock_problem=problem)
    finding = one(host_findings(replace(HEALTHY_HOST, offsite=offsite), 0), "remote-clock")
    assert finding.severity == severity and words in finding.text, finding


@pytest.mark.parametrize(
    ("encrypted", "severity", "words"),
    [
        (False, Severity.WARNING, "which unencrypted backups leave out"),
        (True, Severity.INFO, "kept, encrypted, in domain.xml.age"),
    ],
)
def test_graphics_password_in_the_xml(encrypted: bool, severity: Severity, words: str) -> None:
    domain = replace(check(), xml_secrets=("vnc graphics password",))
    finding = one(domain_findings(domain, Settings(encrypted=encrypted)), "secrets")
    assert finding.severity == severity and words in finding.text
    assert "vnc graphics password" in finding.text
    assert not by_check(domain_findings(check(), Settings(encrypted=encrypted)), "secrets")


def test_signing_key_findings() -> None:
    fine = OffsiteFacts(sign_key="/etc/virtbackup/signing-key")
    finding = one(host_findings(replace(HEALTHY_HOST, offsite=fine), 0), "sign")
    assert finding.severity == Severity.INFO and "/etc/virtbackup/signing-key" in finding.text
    broken = replace(fine, sign_problem="signing key /k cannot be read")
    findings = host_findings(replace(HEALTHY_HOST, offsite=broken), 0)
    assert one(findings, "sign").severity == Severity.BLOCKER and blocks_backups(findings)
    assert not by_check(host_findings(HEALTHY_HOST, 0), "sign")


def test_each_disk_says_whether_it_is_read_incrementally() -> None:
    raw = DiskFacts("vdb", "disk", "file", "/img/b.raw", "raw", discard="unmap")
    findings = by_check(domain_findings(check(VDA, raw)), "incremental")
    assert [(f.disk, f.severity) for f in findings] == [
        ("vda", Severity.INFO),
        ("vdb", Severity.INFO),
    ]
    assert "snapshot: read whole" in findings[0].text
    assert findings[1].text.startswith("a raw image tracks no changes")
    assert findings[1].fix is not None and "qemu-img convert -O qcow2" in findings[1].fix
    shut_off = check(VDA, state=DomainState.SHUTOFF)
    (alone,) = by_check(domain_findings(shut_off), "incremental")
    assert alone.text.startswith("incremental reads: changes since the last backup")
    (streams,) = by_check(domain_findings(shut_off, Settings(repository=False)), "incremental")
    assert streams.text == "stream backups read everything"


def test_each_disk_read_by_the_backup_api_says_how() -> None:
    nbd = DiskFacts("vdb", "disk", "network", None, "raw", network="nbd://h:10809/e")
    findings = by_check(domain_findings(check(VDA, nbd)), "method")
    assert [(f.severity, f.disk) for f in findings] == [
        (Severity.INFO, "vda"),
        (Severity.INFO, "vdb"),
    ]
    assert findings[0].text.endswith("only what changed since the last backup")
    assert findings[1].text.startswith("network disk (nbd://h:10809/e), read over NBD")
    assert "in full each time, raw keeps no change bitmaps" in findings[1].text
    assert not blocks_backups(findings)
    # a file disk under the snapshot method needs no word of its own
    assert by_check(domain_findings(check(VDA, method=Method.SNAPSHOT)), "method") == []
