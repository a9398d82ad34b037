"""`virtbackup doctor [DOMAIN...]`: what stops small, consistent backups, and the fixes.

`--json` prints {"version", "uri", "blockers", "warnings", "findings": [{"severity",
"subject", "domain", "disk", "check", "text", "fix"}]}; exit 1 when a finding blocks
backups.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.adapters.rclone import Remote
from virtbackup.cli.context import (
    GlobalOptions,
    configured_layout,
    dest_option,
    json_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.doctor_view import render
from virtbackup.cli.remote_options import remote_store
from virtbackup.core.config import Config
from virtbackup.core.doctor import blocks_backups, diagnose
from virtbackup.core.doctor_facts import Finding, Settings, Severity
from virtbackup.core.errors import ExitCode
from virtbackup.core.manifest import LAYOUT_REPOSITORY
from virtbackup.core.model import DomainFacts
from virtbackup.core.planning import PlanOptions
from virtbackup.engine.health.doctor import OptionsFor, examine

DOCTOR_SCHEMA_VERSION = 1


@click.command("doctor")
@click.argument("domains", nargs=-1)
@dest_option("Check free space here")
@click.option(
    "--no-guestfs",
    "skip_guestfs",
    is_flag=True,
    help="Do not launch the libguestfs appliance (saves 10-20 s; shrink needs it).",
)
@json_option("the findings")
@pass_globals
def doctor_command(
    options: GlobalOptions,
    domains: tuple[str, ...],
    dest: Path | None,
    skip_guestfs: bool,
    as_json: bool,
) -> int:
    """Tell what stops this host or domain from small, consistent backups, and the fix.

    Checks the host (libvirtd, programs, the libguestfs appliance, free space at the
    destination, the encryption keys and the offsite remote) and each domain (guest
    agent, discard passthrough, qcow2 version, hole punching, backing chains, snapshot
    room). Changes nothing. Exit 1 when a finding blocks backups.
    """
    config = load_settings(options)
    overlay_dir = config.overlay_dir
    found = examine(
        options.uri,
        domains,
        connect,
        _plan_options(config),
        dest=dest or config.dest,
        overlay_dir=overlay_dir,
        guestfs=not skip_guestfs,
        appliance_timeout=config.appliance_timeout,
        encrypt=config.encrypt,
        sign_key=config.sign_key,
        remote=_configured_remote(config),
    )
    settings = Settings(
        overlay_dir=str(overlay_dir) if overlay_dir else None,
        snapshot_size=config.defaults.snapshot_size,
        snapshot_sizes={
            name: config.for_domain(name).snapshot_size
            for name in (check.plan.domain.name for check in found.domains)
        },
        encrypted=config.encrypt is not None,
        repository=configured_layout(config) == LAYOUT_REPOSITORY,
    )
    findings = diagnose(found.host, found.domains, settings)
    if as_json:
        click.echo(json.dumps(doctor_document(options.uri, findings), indent=2, ensure_ascii=False))
    else:
        render(findings)
    return int(ExitCode.FAILED if blocks_backups(findings) else ExitCode.OK)


def _configured_remote(config: Config) -> Remote | None:
    store = remote_store("", None, config) if config.remote is not None else None
    return store.remote if store is not None else None


def _plan_options(config: Config) -> OptionsFor:
    def options_for(facts: DomainFacts) -> PlanOptions:
        settings = config.for_domain(facts.name)
        return PlanOptions(
            method=settings.method,
            exclude_disks=settings.exclude_disks,
            backup_api=configured_layout(config) == LAYOUT_REPOSITORY,
        )

    return options_for


def doctor_document(uri: str, findings: Sequence[Finding]) -> dict[str, Any]:
    return {
        "version": DOCTOR_SCHEMA_VERSION,
        "uri": uri,
        "blockers": sum(f.severity == Severity.BLOCKER for f in findings),
        "warnings": sum(f.severity == Severity.WARNING for f in findings),
        "findings": [
            {
                "severity": f.severity.value,
                "subject": f.subject.value,
                "domain": f.domain,
                "disk": f.disk,
                "check": f.check,
                "text": f.text,
                "fix": f.fix,
            }
            for f in findings
        ],
    }
