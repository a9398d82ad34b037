"""The summary table at the end of `backup` and `all`."""

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from virtbackup.cli.console import stdout_console, text
from virtbackup.core.errors import ExitCode, Interrupted
from virtbackup.core.sizes import human_size
from virtbackup.core.summary import OutcomeRow, summary_document
from virtbackup.engine.runs.all_domains import DomainReport
from virtbackup.engine.runs.domain_backup import DomainOutcome, exit_code

_STYLE = {
    "ok": "green",
    "failed": "bold red",
    "incomplete": "bold red",
    "locked": "yellow",
    "skipped": "dim",
    "interrupted": "bold red",
}


@dataclass(frozen=True)
class RunSummary:
    code: ExitCode
    rows: list[OutcomeRow]
    document: dict[str, Any]  # what --json prints and `all` keeps in DEST


def summarise(reports: Sequence[DomainReport], dest: Path, started: datetime) -> RunSummary:
    code = exit_code([report.outcome for report in reports])
    rows = [to_row(r.outcome, r.pruned, r.pruned_remote) for r in reports]
    document = summary_document(
        rows,
        host=socket.gethostname(),
        dest=str(dest),
        started=started,
        finished=datetime.now(UTC),
        exit_code=code,
    )
    return RunSummary(code, rows, document)


def show_summary(
    summary: RunSummary, as_json: bool, verbosity: int, stop: Interrupted | None
) -> int:
    """Print the summary and return the exit code; a signal that ended the run is
    raised afterwards (exit 130 with its one line), even when the terminal is gone."""
    try:
        if as_json:
            print_json(summary.document)
        elif verbosity >= 0:
            print_summary(summary.rows)
    finally:
        if stop is not None:
            raise stop
    return int(summary.code)


def to_row(
    outcome: DomainOutcome, pruned: Sequence[str] = (), pruned_remote: Sequence[str] = ()
) -> OutcomeRow:
    return OutcomeRow(
        domain=outcome.domain,
        result=outcome.result.value,
        message=outcome.message,
        method=outcome.method,
        disks=outcome.disks,
        read=outcome.read,
        stored=outcome.stored,
        seconds=outcome.seconds,
        backup=str(outcome.backup) if outcome.backup else None,
        warnings=outcome.warnings,
        pruned=tuple(pruned),
        pruned_remote=tuple(pruned_remote),
        reclaimed=outcome.reclaimed,
        offsite=outcome.offsite,
        left_out=outcome.left_out,
        excluded=outcome.excluded,
    )


def print_summary(rows: Sequence[OutcomeRow]) -> None:
    table = Table(title="virtbackup summary", title_justify="left")
    for heading in ("domain", "method"):
        table.add_column(heading)
    for heading in ("disks", "read", "stored", "ratio", "time"):
        table.add_column(heading, justify="right")
    table.add_column("result")
    for row in rows:
        result = text(row.result, style=_STYLE.get(row.result, ""))
        if row.result != "ok" or row.warnings:
            details = [row.message] if row.result != "ok" else []
            result.append("  " + "; ".join(details + list(row.warnings)))
        if row.excluded:
            result.append(f"  excluded: {', '.join(row.excluded)}")
        if row.reclaimed is not None:
            result.append(f"  trim freed {human_size(row.reclaimed)}")
        if row.offsite in ("copied", "streamed"):
            result.append(f"  offsite: {row.offsite}")
        elif row.offsite == "failed":
            result.append("  NOT OFFSITE", style="bold red")
        table.add_row(
            text(row.domain),
            text(row.method or "-"),
            str(row.disks) if row.disks else "-",
            human_size(row.read or None),
            human_size(row.stored or None),
            f"{row.ratio:.1f}x" if row.ratio else "-",
            f"{row.seconds:.1f}s" if row.seconds else "-",
            result,
        )
    stdout_console(120, also_on_terminal=True).print(table)


def print_json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
