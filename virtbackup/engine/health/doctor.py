"""Gather what `virtbackup doctor` judges: facts about the host and each domain.

Nothing here changes a domain or an image: libvirt is opened read-write only because
asking the guest agent needs it, images are inspected with `qemu-img info -U`, and the
hole-punching test runs on an unnamed scratch file beside the image.
"""

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

from virtbackup.adapters import age, host_probe, rclone, ssh_sign
from virtbackup.adapters.guestfs_launch import DEFAULT_LAUNCH_TIMEOUT
from virtbackup.adapters.hypervisor.connection import ConnectFailed, Hypervisor
from virtbackup.adapters.lvm import find_lv
from virtbackup.adapters.rclone import Remote
from virtbackup.core.doctor_facts import (
    AgentState,
    DestFacts,
    DiskCheck,
    DomainCheck,
    HostFacts,
    OffsiteFacts,
    ProgramFact,
    VolumeGroupFacts,
)
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method
from virtbackup.core.planning import DomainPlan, PlanOptions, plan_domain
from virtbackup.core.xml_secrets import SecretsError, secrets_in
from virtbackup.engine.stores.remote_repository import remote_config, remote_secrets

log = logging.getLogger(__name__)

# (program, Debian package): what backups, restores with stock tools and LVM need.
CLOCK_PROBE = ".virtbackup-clock-probe"  # on the remote, removed at once

PROGRAMS = (("qemu-img", "qemu-utils"), ("lz4", "lz4"), ("lvcreate", "lvm2"))

Connector = Callable[[str], AbstractContextManager[Hypervisor]]
OptionsFor = Callable[[DomainFacts], PlanOptions]


@dataclass(frozen=True)
class Examination:
    host: HostFacts
    domains: tuple[DomainCheck, ...]


def examine(
    uri: str,
    names: Sequence[str],
    connect: Connector,
    options_for: OptionsFor,
    *,
    dest: Path | None,
    overlay_dir: Path | None,
    guestfs: bool,
    appliance_timeout: float = DEFAULT_LAUNCH_TIMEOUT,
    encrypt: Path | None = None,
    remote: Remote | None = None,
    sign_key: Path | None = None,
) -> Examination:
    """Look at the host and at the named domains (every domain when none is named).

    Raises UnknownDomain (exit 2) for a name that does not exist; an unreachable
    daemon is a finding, not an error.
    """
    libvirt_error = None
    checks: list[DomainCheck] = []
    try:
        with connect(uri) as hypervisor:
            for facts in hypervisor.discover(names=names):
                plan = plan_domain(facts, options_for(facts))
                checks.append(_domain_check(hypervisor, plan, overlay_dir))
    except ConnectFailed as err:
        libvirt_error = err.message
    host = HostFacts(
        uri=uri,
        libvirt_error=libvirt_error,
        programs=tuple(
            ProgramFact(name, host_probe.program(name), package) for name, package in PROGRAMS
        ),
        guestfs_checked=guestfs,
        guestfs_error=_guestfs_error(appliance_timeout) if guestfs else None,
        dest=_dest_facts(dest) if dest is not None else None,
        # Discovery fills on_lv (True/False) where it can tell (lvs installed and working).
        lvm_checked=all(d.disk.on_lv is not None for c in checks for d in c.disks if d.backed_up),
        offsite=_signing_facts(_offsite_facts(encrypt, remote), sign_key),
    )
    return Examination(host, tuple(checks))


def _offsite_facts(encrypt: Path | None, remote: Remote | None) -> OffsiteFacts:
    facts = OffsiteFacts()
    if encrypt is not None:
        try:
            keys = len(age.read_recipients(encrypt).keys)
            facts = replace(facts, recipients_file=str(encrypt), recipients=keys)
        except VirtbackupError as err:
            facts = replace(facts, recipients_file=str(encrypt), encrypt_problem=err.message)
    if remote is not None:
        facts = replace(facts, remote=remote.location)
        try:
            rclone.check_config(remote)
            rclone.list_entries(remote, "")
        except VirtbackupError as err:
            return replace(facts, remote_problem=str(err))
        facts = _remote_repository_facts(facts, remote)
    return facts


def _remote_repository_facts(facts: OffsiteFacts, remote: Remote) -> OffsiteFacts:
    """The remote repository's version and secrets, and how far the remote's clock is
    from ours. Measuring the clock writes one empty file beside the backups and removes
    it: the only thing doctor writes."""
    try:
        config = remote_config(remote)
        if config is not None:
            facts = replace(
                facts,
                repository_version=config.version,
                repository_encrypted=config.secret_id is not None,
                repository_secrets=len(remote_secrets(remote)),
            )
    except VirtbackupError as err:
        facts = replace(facts, repository_problem=str(err))
    try:
        probe = f"{CLOCK_PROBE}-{os.getpid()}"
        facts = replace(facts, clock_offset=rclone.clock_offset(remote, probe))
    except VirtbackupError as err:
        facts = replace(facts, clock_problem=str(err))
    return facts


def _signing_facts(facts: OffsiteFacts, sign_key: Path | None) -> OffsiteFacts:
    if sign_key is None:
        return facts
    try:
        ssh_sign.check_key(sign_key)
    except VirtbackupError as err:
        return replace(facts, sign_key=str(sign_key), sign_problem=err.message)
    return replace(facts, sign_key=str(sign_key))


def _guestfs_error(launch_timeout: float) -> str | None:
    probe = host_probe.guestfs_appliance(launch_timeout)
    return None if probe.value is True else probe.error or "the appliance did not start"


def _dest_facts(dest: Path) -> DestFacts:
    problem = host_probe.dest_problem(dest)
    if problem is not None:
        return DestFacts(str(dest), problem)
    free = host_probe.free_bytes(dest)
    return DestFacts(str(dest), None, free.value if isinstance(free.value, int) else None)


# -- one domain ---------------------------------------------------------------------------


def _domain_check(
    hypervisor: Hypervisor, plan: DomainPlan, overlay_dir: Path | None
) -> DomainCheck:
    facts = plan.domain
    agent, detail = _agent(hypervisor, facts)
    backed_up = {d.disk.target for d in plan.backed_up}
    disks = tuple(
        _disk_check(disk, disk.target in backed_up, plan, overlay_dir) for disk in facts.disks
    )
    return DomainCheck(plan, agent, detail, disks, _xml_secrets(hypervisor, facts))


def _xml_secrets(hypervisor: Hypervisor, facts: DomainFacts) -> tuple[str, ...]:
    """The secrets in the definition a backup would store (the secure XML)."""
    try:
        xml = hypervisor.domain(facts.name).config_xml()
        return secrets_in(xml) if xml is not None else ()
    except (VirtbackupError, SecretsError) as err:
        log.info("cannot read the XML of %s: %s", facts.name, err)
        return ()


def _agent(hypervisor: Hypervisor, facts: DomainFacts) -> tuple[AgentState, str | None]:
    if not facts.has_agent_channel:
        return AgentState.NO_CHANNEL, None
    if facts.state != DomainState.RUNNING:
        return AgentState.NOT_RUNNING, None
    try:
        dom = hypervisor.domain(facts.name)
        if not dom.agent_connected():
            return AgentState.DISCONNECTED, None
        reason = dom.agent_silence()
    except VirtbackupError as err:
        return AgentState.SILENT, err.message
    return (AgentState.ANSWERING, None) if reason is None else (AgentState.SILENT, reason)


def _disk_check(
    disk: DiskFacts, backed_up: bool, plan: DomainPlan, overlay_dir: Path | None
) -> DiskCheck:
    if not backed_up or disk.path is None or disk.probe_error:
        return DiskCheck(disk, backed_up)
    compat = compat_error = None
    if disk.format == "qcow2":
        probe = host_probe.qcow2_compat(disk.path)
        compat, compat_error = (str(probe.value) if probe.value else None), probe.error
    punch = punch_error = None
    if disk.source_type in ("file", "volume") and not Path(disk.path).is_block_device():
        holes = host_probe.punches_holes(Path(disk.path).parent)
        punch = holes.value if isinstance(holes.value, bool) else None
        punch_error = holes.error
    overlay_free = None
    if plan.method == Method.SNAPSHOT:
        where = overlay_dir or Path(disk.path).parent
        free = host_probe.free_bytes(where)
        overlay_free = free.value if isinstance(free.value, int) else None
    return DiskCheck(
        disk,
        backed_up,
        qcow2_compat=compat,
        compat_error=compat_error,
        punch_holes=punch,
        punch_error=punch_error,
        overlay_free=overlay_free,
        volume_group=_volume_group(disk) if disk.on_lv else None,
    )


def _volume_group(disk: DiskFacts) -> VolumeGroupFacts | None:
    """The LV under the disk and its VG's free space (None when lvs cannot tell)."""
    if disk.lv is None:
        return None
    try:
        lv = find_lv(disk.lv)
    except VirtbackupError as err:
        log.info("cannot look at %s: %s", disk.lv, err)
        return None
    return (
        None
        if lv is None
        else VolumeGroupFacts(lv.vg, lv.name, lv.size, lv.vg_free, lv.extent_size)
    )
