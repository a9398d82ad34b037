"""A domain's doctor checks: the secrets in its definition, its guest agent, and per
disk discard, qcow2 version, incremental reads, hole punching, backing chain and
snapshot room."""

from virtbackup.core.agent_channel import AGENT_CHANNEL
from virtbackup.core.doctor_facts import (
    DEFAULT_SETTINGS,
    AgentState,
    DiskCheck,
    DomainCheck,
    Finding,
    Settings,
    Severity,
)
from virtbackup.core.incremental import incremental_reads
from virtbackup.core.lvm import snapshot_bytes
from virtbackup.core.model import Method
from virtbackup.core.planning import LIVE_STATES
from virtbackup.core.sizes import human_size
from virtbackup.core.trim import DISCARD_PASSTHROUGH

AGENT_CHANNEL_XML = f"<channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel>"
INSTALL_AGENT = (
    "in the guest: apt-get install qemu-guest-agent (dnf install qemu-guest-agent), "
    "then systemctl enable --now qemu-guest-agent"
)


def domain_findings(check: DomainCheck, settings: Settings = DEFAULT_SETTINGS) -> list[Finding]:
    plan = check.plan
    name = plan.domain.name
    found = []
    if plan.method is None and plan.disks:
        found.append(Finding(Severity.WARNING, "plan", f"not backed up: {plan.reason}", None, name))
    elif plan.method is not None:
        found.append(Finding(Severity.INFO, "plan", f"method {plan.method.value}", None, name))
    found += _how_each_disk(check)
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


def _how_each_disk(check: DomainCheck) -> list[Finding]:
    """How each disk is read where that is not the domain's method alone: under the
    backup API (changes tracked or read in full), and network and block disks."""
    plan = check.plan
    return [
        Finding(Severity.INFO, "method", disk.reason, None, plan.domain.name, disk.disk.target)
        for disk in plan.backed_up
        if plan.method is Method.BACKUP_API or disk.disk.source_type in ("network", "block")
    ]


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
    plan_disk = next(d for d in check.plan.disks if d.disk.target == target)
    verdict = incremental_reads(check.plan, plan_disk, settings.repository, disk.qcow2_compat)
    text = f"incremental reads: {verdict.why}" if verdict.reads_changes else verdict.why
    found.append(finding(Severity.INFO, "incremental", text, verdict.fix))
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
