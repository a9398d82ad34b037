"""`virtbackup doctor`: what stops a host or a domain from small, consistent backups.

Pure checks: facts gathered by engine/doctor go in, findings come out. Each finding
names its subject (the host, a domain or one of its disks), says what is wrong or what
works, and gives the exact fix. A blocker is something that makes a backup fail; a
warning costs consistency or space; info says what works (and so what to keep).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from virtbackup.core.agent_channel import AGENT_CHANNEL
from virtbackup.core.config import SnapshotSize
from virtbackup.core.lvm import snapshot_bytes
from virtbackup.core.model import DiskFacts, Method
from virtbackup.core.planning import LIVE_STATES, DomainPlan
from virtbackup.core.sizes import human_size
from virtbackup.core.trim import DISCARD_PASSTHROUGH

MiB = 1024 * 1024

AGENT_CHANNEL_XML = f"<channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel>"
INSTALL_AGENT = (
    "in the guest: apt-get install qemu-guest-agent (dnf install qemu-guest-agent), "
    "then systemctl enable --now qemu-guest-agent"
)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    BLOCKER = "blocker"  # a backup fails until it is fixed: exit 1


class Subject(StrEnum):
    HOST = "host"
    DOMAIN = "domain"
    DISK = "disk"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    check: str  # stable id: libvirt, program, guestfs, dest, agent, discard, ...
    text: str
    fix: str | None = None
    domain: str | None = None
    disk: str | None = None  # target, e.g. vda

    @property
    def subject(self) -> Subject:
        if self.disk is not None:
            return Subject.DISK
        return Subject.DOMAIN if self.domain is not None else Subject.HOST


# -- facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramFact:
    name: str
    path: str | None  # None: not installed
    package: str  # Debian package that has it


@dataclass(frozen=True)
class DestFacts:
    path: str
    problem: str | None = None  # why nothing can be written there
    free: int | None = None


@dataclass(frozen=True)
class OffsiteFacts:
    """Encryption and the offsite remote, when the configuration asks for them."""

    recipients_file: str | None = None
    recipients: int = 0  # keys in it
    encrypt_problem: str | None = None
    remote: str | None = None  # rclone location
    remote_problem: str | None = None
    sign_key: str | None = None  # the signing key, when backups are to be signed
    sign_problem: str | None = None  # why it cannot sign


@dataclass(frozen=True)
class HostFacts:
    uri: str
    libvirt_error: str | None = None  # None: the daemon answered
    programs: tuple[ProgramFact, ...] = ()
    guestfs_checked: bool = False
    guestfs_error: str | None = None  # when checked: None means the appliance booted
    dest: DestFacts | None = None  # None: no destination given
    lvm_checked: bool = False  # whether discovery can tell images on LVM (on_lv)
    offsite: OffsiteFacts = OffsiteFacts()


class AgentState(StrEnum):
    NO_CHANNEL = "no channel"
    NOT_RUNNING = "not running"  # the domain is not running: not checked
    DISCONNECTED = "disconnected"  # channel present, no agent on the other end
    SILENT = "silent"  # connected but it does not answer
    ANSWERING = "answering"


@dataclass(frozen=True)
class VolumeGroupFacts:
    """The LV under an image (or the disk itself) and its volume group."""

    vg: str
    lv: str
    lv_size: int
    vg_free: int
    extent_size: int  # bytes per extent: a snapshot is a whole number of them


@dataclass(frozen=True)
class DiskCheck:
    disk: DiskFacts
    backed_up: bool
    qcow2_compat: str | None = None  # "0.10" / "1.1" of a qcow2 image
    compat_error: str | None = None
    punch_holes: bool | None = None  # file images: None when not known
    punch_error: str | None = None
    overlay_free: int | None = None  # free bytes where its snapshot overlay would go
    volume_group: VolumeGroupFacts | None = None


@dataclass(frozen=True)
class DomainCheck:
    plan: DomainPlan
    agent: AgentState
    agent_detail: str | None = None
    disks: tuple[DiskCheck, ...] = ()
    xml_secrets: tuple[str, ...] = ()  # e.g. "vnc graphics password" (core/xml_secrets.py)


@dataclass(frozen=True)
class Settings:
    """What the configuration says that the checks need."""

    overlay_dir: str | None = None
    overlay_min_free: int = 512 * MiB
    snapshot_size: SnapshotSize = SnapshotSize(percent=10.0)
    # [domain."NAME"] snapshot_size overrides, by domain name
    snapshot_sizes: Mapping[str, SnapshotSize] = field(default_factory=dict)
    encrypted: bool = False  # `encrypt` is set: backups keep the XML's secrets sealed

    def snapshot_size_of(self, domain: str) -> SnapshotSize:
        return self.snapshot_sizes.get(domain, self.snapshot_size)


# -- the checks -----------------------------------------------------------------------------


def diagnose(
    host: HostFacts, domains: Sequence[DomainCheck], settings: Settings = Settings()
) -> list[Finding]:
    findings = host_findings(host, expected_size(domains))
    for check in domains:
        findings += domain_findings(check, settings)
    return findings


def blocks_backups(findings: Iterable[Finding]) -> bool:
    return any(f.severity == Severity.BLOCKER for f in findings)


def expected_size(domains: Sequence[DomainCheck]) -> int:
    """What a backup of these domains may take at most: the bytes their disks occupy
    (lz4 usually makes it smaller; holes and zero runs are never stored)."""
    return sum(d.disk.allocated or 0 for check in domains for d in check.disks if d.backed_up)


def host_findings(host: HostFacts, expected: int) -> list[Finding]:
    found = []
    if host.libvirt_error is not None:
        found.append(
            Finding(
                Severity.BLOCKER,
                "libvirt",
                f"libvirtd at {host.uri} cannot be reached: {host.libvirt_error}",
                "start it (systemctl start libvirtd, or libvirtd -d and virtlogd -d), "
                "or check --connect",
            )
        )
    else:
        found.append(Finding(Severity.INFO, "libvirt", f"libvirtd at {host.uri} answers"))
    found += _program_findings(host.programs)
    found += _guestfs_findings(host)
    found += _dest_findings(host.dest, expected)
    found += _offsite_findings(host.offsite)
    if not host.lvm_checked:
        found.append(
            Finding(
                Severity.INFO,
                "lvm",
                "whether images live on LVM logical volumes cannot be told (lvs): volume "
                "group free space for LVM snapshots is not checked",
                "apt-get install lvm2, or run as root",
            )
        )
    return found


_PROGRAM_ROLES = {
    "qemu-img": (
        Severity.BLOCKER,
        "images of shut-off domains cannot be inspected and overlays not merged offline",
    ),
    "lz4": (
        Severity.WARNING,
        "backups are still written, but cannot be unpacked with stock tools (lz4 -d)",
    ),
    "lvcreate": (Severity.INFO, "the lvm method (LVM snapshots) cannot be used"),
}


def _program_findings(programs: Sequence[ProgramFact]) -> list[Finding]:
    found = []
    for program in programs:
        if program.path is not None:
            continue
        severity, effect = _PROGRAM_ROLES.get(program.name, (Severity.WARNING, "it is needed"))
        found.append(
            Finding(
                severity,
                "program",
                f"{program.name} is not installed: {effect}",
                f"apt-get install {program.package}",
            )
        )
    present = [p.name for p in programs if p.path is not None]
    if present:
        found.append(Finding(Severity.INFO, "program", f"installed: {', '.join(present)}"))
    return found


def _guestfs_findings(host: HostFacts) -> list[Finding]:
    if not host.guestfs_checked:
        return [
            Finding(
                Severity.INFO,
                "guestfs",
                "libguestfs appliance not checked (--no-guestfs)",
                "run 'virtbackup doctor' without --no-guestfs, or libguestfs-test-tool",
            )
        ]
    if host.guestfs_error is None:
        return [Finding(Severity.INFO, "guestfs", "the libguestfs appliance starts: shrink works")]
    return [
        Finding(
            Severity.WARNING,
            "guestfs",
            f"'virtbackup shrink' cannot work: {host.guestfs_error}",
            "run libguestfs-test-tool to see why",
        )
    ]


def _offsite_findings(offsite: OffsiteFacts) -> list[Finding]:
    found = []
    if offsite.encrypt_problem is not None:
        found.append(
            Finding(
                Severity.BLOCKER,
                "encrypt",
                f"backups cannot be encrypted: {offsite.encrypt_problem}",
                "fix the recipients file: one age public key per line (age-keygen -y KEYFILE)",
            )
        )
    elif offsite.recipients_file is not None:
        found.append(
            Finding(
                Severity.INFO,
                "encrypt",
                f"backups are encrypted to {offsite.recipients} key(s) of "
                f"{offsite.recipients_file}; keep the identity off this host",
            )
        )
    if offsite.sign_problem is not None:
        found.append(
            Finding(
                Severity.BLOCKER,
                "sign",
                f"backups cannot be signed: {offsite.sign_problem}",
                "fix sign_key: a readable OpenSSH private key without passphrase",
            )
        )
    elif offsite.sign_key is not None:
        found.append(Finding(Severity.INFO, "sign", f"backups are signed with {offsite.sign_key}"))
    if offsite.remote_problem is not None:
        found.append(
            Finding(
                Severity.BLOCKER,
                "remote",
                f"offsite copies to {offsite.remote} fail: {offsite.remote_problem}",
                "check the remote with 'rclone --config FILE lsd NAME:' and the [remote] "
                "settings; local backups are still made, but each run exits 1",
            )
        )
    elif offsite.remote is not None:
        found.append(Finding(Severity.INFO, "remote", f"the remote {offsite.remote} answers"))
    return found


def _dest_findings(dest: DestFacts | None, expected: int) -> list[Finding]:
    if dest is None:
        return [
            Finding(
                Severity.INFO,
                "dest",
                "no backup destination given: free space not checked",
                "give --dest DIR or set dest in the configuration file",
            )
        ]
    if dest.problem is not None:
        return [
            Finding(
                Severity.BLOCKER,
                "dest",
                f"backups cannot be written: {dest.problem}",
                f"mkdir -p -m 0700 {dest.path} (on a filesystem with room, writable by root)",
            )
        ]
    if dest.free is None:
        return []
    if dest.free < expected:
        return [
            Finding(
                Severity.WARNING,
                "dest",
                f"{human_size(dest.free)} free in {dest.path}, the disks to back up occupy "
                f"{human_size(expected)}: the backup may not fit (lz4 usually makes it smaller)",
                "free space there, prune old backups (virtbackup prune), or choose another "
                "destination; old backups are kept until the new one is complete",
            )
        ]
    return [
        Finding(
            Severity.INFO,
            "dest",
            f"{human_size(dest.free)} free in {dest.path}, at most {human_size(expected)} needed",
        )
    ]


def domain_findings(check: DomainCheck, settings: Settings = Settings()) -> list[Finding]:
    plan = check.plan
    name = plan.domain.name
    found = []
    if plan.method is None and plan.disks:
        found.append(Finding(Severity.WARNING, "plan", f"not backed up: {plan.reason}", None, name))
    elif plan.method is not None:
        found.append(Finding(Severity.INFO, "plan", f"method {plan.method.value}", None, name))
    found += _agent_findings(check)
    found += _secrets_findings(check, settings)
    for left_out in plan.left_out:
        target = left_out.disk.target
        found.append(
            Finding(
                Severity.BLOCKER,
                "left-out",
                f"cannot be backed up ({left_out.reason}): the backup would be incomplete",
                f'back it up on the storage side and leave it out (exclude_disks = ["{target}"] '
                f'in [domain."{name}"])',
                name,
                target,
            )
        )
    for disk in check.disks:
        if disk.backed_up or (disk.disk.probe_error and disk.disk.device == "disk"):
            found += _disk_findings(check, disk, settings)
    return found


def _secrets_findings(check: DomainCheck, settings: Settings) -> list[Finding]:
    if not check.xml_secrets or check.plan.method is None:
        return []
    name = check.plan.domain.name
    secrets = ", ".join(check.xml_secrets)
    if settings.encrypted:
        text = f"its XML holds a {secrets}: kept, encrypted, in domain.xml.age"
        return [Finding(Severity.INFO, "secrets", text, None, name)]
    return [
        Finding(
            Severity.WARNING,
            "secrets",
            f"its XML holds a {secrets}, which unencrypted backups leave out: a domain "
            "restored with --define has none",
            "set encrypt (an age recipients file) to keep it, sealed, in the backups",
            name,
        )
    ]


def _agent_findings(check: DomainCheck) -> list[Finding]:
    name = check.plan.domain.name
    state = check.agent
    if state == AgentState.NO_CHANNEL:
        return [
            Finding(
                Severity.WARNING,
                "agent",
                "no guest agent channel: snapshots are only crash-consistent and --trim "
                "cannot work",
                f"virsh edit {name}: add {AGENT_CHANNEL_XML} inside <devices>, then power "
                f"the domain off and on; {INSTALL_AGENT}",
                name,
            )
        ]
    if state == AgentState.NOT_RUNNING:
        return [
            Finding(
                Severity.INFO,
                "agent",
                f"guest agent channel present; not checked while {name} does not run",
                None,
                name,
            )
        ]
    if state == AgentState.DISCONNECTED:
        return [
            Finding(
                Severity.WARNING,
                "agent",
                "no guest agent runs in the guest: snapshots are only crash-consistent and "
                "--trim cannot work",
                INSTALL_AGENT,
                name,
            )
        ]
    if state == AgentState.SILENT:
        detail = f": {check.agent_detail}" if check.agent_detail else ""
        return [
            Finding(
                Severity.WARNING,
                "agent",
                f"the guest agent does not answer{detail}",
                "in the guest: systemctl restart qemu-guest-agent",
                name,
            )
        ]
    return [
        Finding(
            Severity.INFO,
            "agent",
            "the guest agent answers: snapshots are quiesced (fsfreeze), --trim works",
            None,
            name,
        )
    ]


def _disk_findings(check: DomainCheck, disk: DiskCheck, settings: Settings) -> list[Finding]:
    facts = disk.disk
    name = check.plan.domain.name
    target = facts.target

    def finding(severity: Severity, kind: str, text: str, fix: str | None = None) -> Finding:
        return Finding(severity, kind, text, fix, name, target)

    if facts.probe_error:
        return [
            finding(
                Severity.BLOCKER,
                "image",
                f"cannot be read: {facts.probe_error}",
                f'fix the image path, or leave the disk out (exclude_disks = ["{target}"] '
                f'in [domain."{name}"])',
            )
        ]
    found = [] if facts.readonly else [_discard_finding(check, disk)]
    if disk.qcow2_compat == "0.10":
        found.append(
            finding(
                Severity.WARNING,
                "qcow2-compat",
                "qcow2 version 2 image (compat 0.10): it has no zero clusters, so discards "
                "and zero writes free less (nothing over a backing file)",
                f"with {name} shut off: qemu-img amend -f qcow2 -o compat=1.1 {facts.path}",
            )
        )
    elif disk.compat_error:
        found.append(finding(Severity.INFO, "qcow2-compat", f"not checked: {disk.compat_error}"))
    if disk.punch_holes is False:
        found.append(
            finding(
                Severity.WARNING,
                "punch-hole",
                f"the filesystem under {facts.path} cannot punch holes: trims and discards "
                "free nothing on the host, and freed blocks are read into every backup",
                "move the image to ext4, xfs or btrfs (with the domain shut off, or live: "
                f"virsh blockcopy {name} {target} NEW --wait --pivot)",
            )
        )
    elif disk.punch_error:
        found.append(finding(Severity.INFO, "punch-hole", f"not checked: {disk.punch_error}"))
    found += _chain_findings(check, disk)
    found += _snapshot_findings(check, disk, settings)
    return found


def _discard_finding(check: DomainCheck, disk: DiskCheck) -> Finding:
    facts = disk.disk
    name = check.plan.domain.name
    if facts.discard == DISCARD_PASSTHROUGH:
        return Finding(
            Severity.INFO,
            "discard",
            "discard='unmap': what the guest trims is freed in the host image",
            f"virsh domfstrim {name}, or virtbackup backup --trim, or fstrim.timer in the guest",
            name,
            facts.target,
        )
    now = f"discard='{facts.discard}'" if facts.discard else "no discard attribute"
    fmt = facts.format or "raw"
    return Finding(
        Severity.WARNING,
        "discard",
        f"{now}: the guest's discards stop in qemu, so what the guest deletes stays "
        "allocated in the host image and is read into every backup",
        f"virsh edit {name}: give {facts.target} <driver name='qemu' type='{fmt}' "
        "discard='unmap'/>, then power the domain off and on (a reboot inside is not "
        f"enough); then trim: virsh domfstrim {name}, virtbackup backup --trim, or "
        "systemctl enable --now fstrim.timer in the guest",
        name,
        facts.target,
    )


def _chain_findings(check: DomainCheck, disk: DiskCheck) -> list[Finding]:
    facts = disk.disk
    if not facts.backing_chain:
        return []
    name = check.plan.domain.name
    live = check.plan.domain.state in LIVE_STATES
    flatten = (
        f"virsh blockpull {name} {facts.target} --wait"
        if live
        else f"qemu-img rebase -f {facts.format or 'qcow2'} -b '' {facts.path}"
    )
    return [
        Finding(
            Severity.WARNING,
            "backing-chain",
            f"backing chain {' <- '.join(reversed(facts.backing_chain))} <- {facts.path}: "
            "the backup holds the top image only; a restore needs the base images as they are",
            f"flatten it ({flatten}), or keep copies of the base images (they must not change)",
            name,
            facts.target,
        )
    ]


def _snapshot_findings(check: DomainCheck, disk: DiskCheck, settings: Settings) -> list[Finding]:
    """Would the method planned for a live domain fail on this disk?"""
    plan = check.plan
    facts = disk.disk
    name = plan.domain.name
    if plan.domain.state not in LIVE_STATES:
        return []

    def blocker(kind: str, text: str, fix: str) -> list[Finding]:
        return [Finding(Severity.BLOCKER, kind, text, fix, name, facts.target)]

    if plan.method == Method.SNAPSHOT:
        if facts.source_type == "volume":
            return blocker(
                "snapshot",
                "a storage volume disk: the snapshot method handles file and block disks only",
                f'use --method shutdown for {name} (method = "shutdown" in its '
                "configuration), or a file disk",
            )
        if facts.source_type == "block" and settings.overlay_dir is None:
            return blocker(
                "snapshot",
                "a block device: its snapshot overlay cannot go next to it",
                "set overlay_dir in the configuration file (or --overlay-dir) to a "
                "directory with room for the guest's writes during a backup",
            )
        if disk.overlay_free is not None and disk.overlay_free < settings.overlay_min_free:
            where = settings.overlay_dir or f"the directory of {facts.path}"
            return blocker(
                "snapshot",
                f"only {human_size(disk.overlay_free)} free in {where} for the snapshot overlay, "
                f"{human_size(settings.overlay_min_free)} wanted",
                "free space there or set overlay_dir to a directory with room",
            )
    vg = disk.volume_group
    if vg is None and facts.on_lv:
        return [
            Finding(
                Severity.INFO,
                "lvm",
                "on an LVM logical volume: volume group free space not checked",
                "vgs shows VFree; an LVM snapshot needs snapshot_size of it",
                name,
                facts.target,
            )
        ]
    if vg is not None:
        need = snapshot_bytes(
            settings.snapshot_size_of(check.plan.domain.name), vg.lv_size, vg.extent_size
        )
        if vg.vg_free < need:
            severity = Severity.BLOCKER if plan.method == Method.LVM else Severity.WARNING
            return [
                Finding(
                    severity,
                    "lvm",
                    f"volume group {vg.vg} has {human_size(vg.vg_free)} free, an LVM snapshot of "
                    f"{vg.lv} wants {human_size(need)}",
                    f"add a physical volume (vgextend {vg.vg} /dev/NEW), shrink another LV, "
                    "or lower snapshot_size",
                    name,
                    facts.target,
                )
            ]
    return []
