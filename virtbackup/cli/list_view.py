"""The table of `virtbackup list`: each domain, its disks, and how they would be backed up."""

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from virtbackup.cli.console import stdout_console, text
from virtbackup.core.incremental import incremental_reads
from virtbackup.core.planning import DiskPlan, DomainPlan
from virtbackup.core.sizes import human_size


def render_table(uri: str, plans: Sequence[DomainPlan], repository: bool = True) -> None:
    console = stdout_console(160)
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
        _add_domain_rows(table, plan, repository)
    console.print(table)
    console.print(text(summary_line(plans)))


def _add_domain_rows(table: Table, plan: DomainPlan, repository: bool) -> None:
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
            _reason_cell(plan, disk_plan, repository),
        )


def _reason_cell(plan: DomainPlan, disk: DiskPlan, repository: bool) -> Text:
    """The disk's reason and, when it is backed up, whether it is read incrementally
    (and how it could be)."""
    cell = text(disk.reason, style="yellow" if disk.warning else "")
    if disk.backup:
        verdict = incremental_reads(plan, disk, repository)
        label = "incremental" if verdict.reads_changes else "read whole"
        cell.append(f"\n{label}: {verdict.why}", style="dim")
        if verdict.fix:
            cell.append(f"\nfor incremental reads: {verdict.fix}", style="dim")
    return cell


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
