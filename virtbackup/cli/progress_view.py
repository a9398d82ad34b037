"""The CLI's printers of the engine's progress: byte bars for disks, a bar of stages per
domain (shrink), drawn on a terminal, logged or silent otherwise; and the steps of
`clean` as lines."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from virtbackup.cli.console import stderr_console
from virtbackup.cli.console import text as cell
from virtbackup.core.progress import NullProgress, ProgressSink, RecordingSteps, StageSink
from virtbackup.core.text import printable

log = logging.getLogger(__name__)


class RichProgressSink:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def on_start(self, total: int, label: str) -> None:
        self._task = self._progress.add_task(printable(label), total=total)

    def on_advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def on_done(self) -> None:
        if self._task is not None:
            self._progress.stop_task(self._task)
            self._task = None


@contextmanager
def progress_sink(verbosity: int) -> Iterator[ProgressSink]:
    """Bars on a terminal unless -q; cron and journald get none."""
    if verbosity < 0 or not stderr_console.is_terminal:
        yield NullProgress()
        return
    columns = (
        TextColumn("{task.description:>6}", markup=False),  # a disk target: text
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        yield RichProgressSink(progress)


class StageBars:
    """One line per domain: spinner, current stage, stages done, time; steps and
    warnings of the domain printed above the bars."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, int] = {}

    def begin(self, domain: str, total_stages: int) -> None:
        self._tasks[domain] = self._progress.add_task(
            printable(domain), total=total_stages, step=""
        )
        self._started[domain] = 0

    def stage(self, domain: str, text: str, total_stages: int | None = None) -> None:
        task = self._tasks.get(domain)
        if task is None:
            return
        done = self._started[domain]  # every stage started before this one is done
        self._started[domain] += 1
        self._progress.update(task, completed=done, total=total_stages, step=printable(text))
        log.debug("%s: %s", domain, text)

    def step(self, domain: str, text: str) -> None:
        self._progress.console.print(cell(f"  {domain}: {text}", style="dim"))

    def warning(self, domain: str, text: str) -> None:
        self.step(domain, f"warning: {text}")

    def end(self, domain: str) -> None:
        task = self._tasks.pop(domain, None)
        if task is not None:
            done = self._started.pop(domain, 0)
            self._progress.update(task, completed=done, total=done, step="done")
            self._progress.stop_task(task)


class StageLines(NullProgress):
    """Cron and journald: each stage, step and warning as a log line."""

    def stage(self, domain: str, text: str, total_stages: int | None = None) -> None:
        log.info("%s: %s", domain, text)

    def step(self, domain: str, text: str) -> None:
        log.info("%s: %s", domain, text)

    def warning(self, domain: str, text: str) -> None:
        log.info("%s: warning: %s", domain, text)


@contextmanager
def stage_sink(verbosity: int, as_json: bool) -> Iterator[StageSink]:
    """A bar per domain on a terminal; log lines for cron and journald; none with -q or
    --json."""
    if verbosity < 0 or as_json:
        yield NullProgress()
        return
    if not stderr_console.is_terminal:
        yield StageLines()
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),  # a domain name
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}", markup=False),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        yield StageBars(progress)


class EchoSteps(RecordingSteps):
    """Prints each step as it happens (a commit may take long) and keeps them for --json."""

    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.echo = echo

    def step(self, domain: str, text: str) -> None:
        super().step(domain, text)
        if self.echo:
            click.echo(f"{domain}: {text}")

    def warning(self, domain: str, text: str) -> None:
        super().warning(domain, text)
        if self.echo:
            click.echo(f"virtbackup: warning: {domain}: {text}", err=True)
