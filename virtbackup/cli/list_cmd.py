"""`virtbackup list`: what would be backed up, and how.

`--json` prints a stable document (README, "virtbackup list --json"); the field names
given there never change meaning, new fields may be added.
"""

import json
from collections.abc import Sequence
from typing import Any

import click

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.cli.context import GlobalOptions, configured_layout, load_settings, pass_globals
from virtbackup.cli.list_view import render_table
from virtbackup.core.incremental import incremental_reads
from virtbackup.core.manifest import LAYOUT_REPOSITORY, LAYOUTS
from virtbackup.core.model import Method
from virtbackup.core.planning import DiskPlan, DomainPlan, PlanOptions, plan_domain

LIST_SCHEMA_VERSION = 1
METHOD_CHOICES = [m.value for m in Method]


@click.command("list")
@click.argument("domains", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in README).")
@click.option(
    "--method",
    type=click.Choice(METHOD_CHOICES),
    default=Method.AUTO.value,
    show_default=True,
    help="Show the plan for this backup method.",
)
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    help="Show the plan for backups in this layout (auto reads only what changed, through "
    "libvirt's backup API, for repository backups of qcow2 disks) [default: as for backup: "
    "`layout` of the configuration file, else repository, or stream with a remote].",
)
@click.option("--include", multiple=True, metavar="GLOB", help="Only domains matching GLOB.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip domains matching GLOB.")
@pass_globals
def list_command(
    options: GlobalOptions,
    domains: tuple[str, ...],
    as_json: bool,
    method: str,
    layout: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
) -> None:
    """Show domains, their disks, and whether and how each would be backed up."""
    layout = layout or configured_layout(load_settings(options))
    plan_options = PlanOptions(method=Method(method), backup_api=layout == LAYOUT_REPOSITORY)
    with connect(options.uri, readonly=True) as hypervisor:
        facts = hypervisor.discover(domains, include, exclude)
    plans = [plan_domain(domain, plan_options) for domain in facts]
    if as_json:
        document = list_document(options.uri, plans, layout == LAYOUT_REPOSITORY)
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        render_table(options.uri, plans, layout == LAYOUT_REPOSITORY)


# -- JSON --------------------------------------------------------------------------------


def list_document(uri: str, plans: Sequence[DomainPlan], repository: bool = True) -> dict[str, Any]:
    return {
        "version": LIST_SCHEMA_VERSION,
        "uri": uri,
        "domains": [_domain_json(plan, repository) for plan in plans],
    }


def _domain_json(plan: DomainPlan, repository: bool) -> dict[str, Any]:
    domain = plan.domain
    return {
        "name": domain.name,
        "uuid": domain.uuid,
        "state": domain.state.value,
        "persistent": domain.persistent,
        "method": plan.method.value if plan.method else None,
        "reason": plan.reason,
        "has_agent_channel": domain.has_agent_channel,
        "disks": [
            {**_disk_json(disk), **_incremental_json(plan, disk, repository)} for disk in plan.disks
        ],
    }


def _incremental_json(plan: DomainPlan, disk: DiskPlan, repository: bool) -> dict[str, Any]:
    verdict = incremental_reads(plan, disk, repository)
    return {
        "incremental": verdict.reads_changes,
        "incremental_reason": verdict.why,
        "incremental_fix": verdict.fix,
    }


def _disk_json(plan: DiskPlan) -> dict[str, Any]:
    disk = plan.disk
    return {
        "target": disk.target,
        "device": disk.device,
        "type": disk.source_type,
        "path": disk.path,
        "format": disk.format,
        "virtual_size": disk.virtual_size,
        "allocated": disk.allocated,
        "physical": disk.physical,
        "backing_chain": list(disk.backing_chain),
        "readonly": disk.readonly,
        "shareable": disk.shareable,
        "pool": disk.pool,
        "volume": disk.volume,
        "network": disk.network,
        "on_lv": disk.on_lv,
        "lv": disk.lv,
        "backup": plan.backup,
        "reason": plan.reason,
        "warning": plan.warning,
        "left_out": plan.left_out,
    }
