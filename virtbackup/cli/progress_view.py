"""Progress bars for the engine's ProgressSink: drawn on a terminal, silent otherwise."""

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from virtbackup.cli.output import stderr_console
from virtbackup.core.progress import NullProgress, ProgressSink
from virtbackup.core.text import printable


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
