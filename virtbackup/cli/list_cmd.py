"""`virtbackup list`: what would be backed up, and how.

`--json` prints a stable document (README, "virtbackup list --json"); the field names
given there never change meaning, new fields may be added.
"""

import json
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from virtbackup.adapters.discovery import discover
from virtbackup.adapters.libvirt_conn import connect
from virtbackup.cli.context import GlobalOptions, pass_globals
from virtbackup.cli.output import text
from virtbackup.core.model import Method
from virtbackup.core.planning import DiskPlan, DomainPlan, PlanOptions, plan_domain
from virtbackup.core.sizes import human_size

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
@click.option("--include", multiple=True, metavar="GLOB", help="Only domains matching GLOB.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip domains matching GLOB.")
@pass_globals
def list_command(
    options: GlobalOptions,
    domains: tuple[str, ...],
    as_json: bool,
    method: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
) -> None:
    """Show domains, their disks, and whether and how each would be backed up."""
    plan_options = PlanOptions(method=Method(method))
    with connect(options.uri, readonly=True) as conn:
        facts = discover(conn, domains, include, exclude)
    plans = [plan_domain(domain, plan_options) for domain in facts]
    if as_json:
        click.echo(json.dumps(list_document(options.uri, plans), indent=2, ensure_ascii=False))
    else:
        render_table(_stdout_console(), options.uri, plans)


def _stdout_console() -> Console:
    console = Console()
    if not console.is_terminal:
        # Mail from cron and redirected output: wide lines beat paths folded at 80.
        console = Console(width=max(console.width, 160))
    return console


# -- JSON --------------------------------------------------------------------------------


def list_document(uri: str, plans: Sequence[DomainPlan]) -> dict[str, Any]:
    return {
        "version": LIST_SCHEMA_VERSION,
        "uri": uri,
        "domains": [_domain_json(plan) for plan in plans],
    }


def _domain_json(plan: DomainPlan) -> dict[str, Any]:
    domain = plan.domain
    return {
        "name": domain.name,
        "uuid": domain.uuid,
        "state": domain.state.value,
        "persistent": domain.persistent,
        "method": plan.method.value if plan.method else None,
        "reason": plan.reason,
        "has_agent_channel": domain.has_agent_channel,
        "disks": [_disk_json(disk) for disk in plan.disks],
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


# -- table -------------------------------------------------------------------------------


def render_table(console: Console, uri: str, plans: Sequence[DomainPlan]) -> None:
    if not plans:
        console.print(text(f"no domains on {uri}"))
        return
    table = Table(title=text(f"Domains on {uri}"), title_justify="left")
    table.add_column("Domain / disk", overflow="fold")
    table.add_column("State / source", overflow="fold")
    table.add_column("Method / format", no_wrap=True)
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("Used", justify="right", no_wrap=True)
    table.add_column("Backup", no_wrap=True)
    table.add_column("Reason", overflow="fold", ratio=1)
    for index, plan in enumerate(plans):
        if index:
            table.add_section()
        _add_domain_rows(table, plan)
    console.print(table)
    console.print(text(summary_line(plans)))


def _add_domain_rows(table: Table, plan: DomainPlan) -> None:
    domain = plan.domain
    name = text(domain.name, style="bold")
    if not domain.persistent:
        name.append(" (transient)", style="dim")
    ok = plan.method is not None
    method = text(plan.method.value if plan.method else "none", style="bold" if ok else "red")
    reason = text(plan.reason, style="" if ok else "red")
    empty = text("")
    table.add_row(name, text(domain.state.value), method, empty, empty, empty, reason)
    for disk_plan in plan.disks:
        disk = disk_plan.disk
        source = text(disk.path or disk.network or "(no source)")
        source.append(f"\n{disk.device}, {disk.source_type}", style="dim")
        if disk.on_lv:
            source.append(f", on LVM {disk.lv or ''}".rstrip(), style="dim")
        for backing in disk.backing_chain:
            source.append(f"\n└ {backing}", style="dim")
        table.add_row(
            text(f"  {disk.target}"),
            source,
            text(disk.format or "-"),
            text(human_size(disk.virtual_size)),
            text(human_size(disk.allocated)),
            _backup_cell(disk_plan),
            text(disk_plan.reason, style="yellow" if disk_plan.warning else ""),
        )


def _backup_cell(plan: DiskPlan) -> Text:
    if plan.backup:
        return text("yes", style="yellow" if plan.warning else "green")
    if plan.left_out:
        return text("no", style="bold red")  # the domain's backup will be incomplete
    return text("no", style="yellow" if plan.warning else "dim")


def summary_line(plans: Sequence[DomainPlan]) -> str:
    domains = sum(1 for plan in plans if plan.method is not None)
    disks = [d.disk for plan in plans for d in plan.backed_up]
    used = sum(d.allocated or 0 for d in disks)
    return (
        f"{domains} of {len(plans)} domains, {len(disks)} disks would be backed up "
        f"({human_size(used)} allocated)"
    )
