"""The end of `backup` and `all`: record the run for monitoring, then the summary."""

from datetime import UTC, datetime
from pathlib import Path

import click

from virtbackup.cli.console import error_line
from virtbackup.cli.summary_view import RunSummary, show_summary
from virtbackup.core.errors import ExitCode, Interrupted
from virtbackup.engine.health.monitoring import after_run
from virtbackup.engine.stores.local import LocalStore


def finish_run(
    summary: RunSummary,
    store: LocalStore,
    metrics_file: Path | None,
    as_json: bool,
    verbosity: int,
    stop: Interrupted | None,
    nothing: str | None = None,
) -> int:
    """Write the run records and the metrics file, print the summary (or, for a run
    with no domain, the line `nothing` says) and return the exit code. A record or
    metrics file that cannot be written is one error line and fails the run (exit 1):
    monitoring would read stale data."""
    problem = after_run(store, summary.rows, datetime.now(UTC), metrics_file)
    if problem is not None:
        error_line(problem)
    if nothing is not None and not as_json and verbosity >= 0:
        click.echo(nothing)
        verbosity = -1
    code = show_summary(summary, as_json, verbosity, stop)
    return ExitCode.FAILED if problem is not None and code == ExitCode.OK else code
