"""The table of `virtbackup prune`: what is kept and why, what is removed."""

from rich.table import Table

from virtbackup.cli.console import stdout_console, text
from virtbackup.engine.stores.retention import PruneResult


def print_decisions(results: list[PruneResult], dry_run: bool, where: str) -> None:
    title = f"retention in {where}" + (" (dry run: nothing removed)" if dry_run else "")
    table = Table(title=text(title))
    for heading in ("domain", "backup", "action", "why"):
        table.add_column(heading)
    for result in results:
        domain = text(result.domain)
        for kept in result.decision.keep:
            table.add_row(domain, text(kept.candidate.name), "keep", text(", ".join(kept.reasons)))
        for stamp in result.unreadable:
            why = result.problems.get(stamp, "manifest unreadable")
            table.add_row(domain, text(stamp), "leave", text(why, style="yellow"))
        for stamp in result.incomplete:
            table.add_row(domain, text(stamp), "keep", "upload not complete")
        for gone in result.decision.remove:
            action = "would remove" if dry_run else "removed"
            table.add_row(domain, text(gone.name), text(action, style="red"), "")
    stdout_console(100, also_on_terminal=True).print(table)
