"""The table of `virtbackup doctor`: each finding, what it is about and how to fix it."""

from collections.abc import Sequence

from rich.table import Table

from virtbackup.cli.console import stdout_console, text
from virtbackup.core.doctor_facts import Finding, Severity

_STYLE = {Severity.INFO: "green", Severity.WARNING: "yellow", Severity.BLOCKER: "bold red"}


def render(findings: Sequence[Finding]) -> None:
    console = stdout_console(160)
    table = Table(title="virtbackup doctor", title_justify="left", show_lines=True)
    table.add_column("", no_wrap=True)
    table.add_column("Subject", no_wrap=True)
    table.add_column("Finding", overflow="fold", ratio=3)
    table.add_column("Fix", overflow="fold", ratio=3)
    for f in findings:
        subject = "host" if f.domain is None else f.domain + (f" {f.disk}" if f.disk else "")
        table.add_row(
            text(f.severity.value, style=_STYLE[f.severity]),
            text(subject),
            text(f.text),
            text(f.fix or "", style="cyan"),
        )
    console.print(table)
    blockers = sum(f.severity == Severity.BLOCKER for f in findings)
    warnings = sum(f.severity == Severity.WARNING for f in findings)
    verdict = "backups are blocked" if blockers else "nothing blocks backups"
    console.print(text(f"{blockers} blockers, {warnings} warnings: {verdict}"))
