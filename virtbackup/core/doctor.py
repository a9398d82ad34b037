"""`virtbackup doctor`: what stops a host or a domain from small, consistent backups.

Pure checks: facts gathered by engine/health/doctor go in (core/doctor_facts), findings come
out: the host's (core/doctor_host) and each domain's (core/doctor_domain). Each finding
names its subject (the host, a domain or one of its disks), says what is wrong or what
works, and gives the exact fix. A blocker is something that makes a backup fail; a
warning costs consistency or space; info says what works (and so what to keep).
"""

from collections.abc import Iterable, Sequence

from virtbackup.core.doctor_domain import domain_findings
from virtbackup.core.doctor_facts import (
    DEFAULT_SETTINGS,
    DomainCheck,
    Finding,
    HostFacts,
    Settings,
    Severity,
)
from virtbackup.core.doctor_host import host_findings


def diagnose(
    host: HostFacts, domains: Sequence[DomainCheck], settings: Settings = DEFAULT_SETTINGS
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
