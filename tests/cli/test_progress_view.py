"""The printers of the engine's progress: what shrink shows of its stages and steps."""

import io
import logging

import pytest
from rich.console import Console
from rich.progress import Progress, TextColumn

from virtbackup.cli.progress_view import StageBars, StageLines


def test_stage_bars_count_stages_and_print_steps_and_warnings_above() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None)
    with Progress(TextColumn("{task.fields[step]}"), console=console) as progress:
        bars = StageBars(progress)
        bars.begin("web1", 3)
        bars.stage("web1", "launching the appliance")
        bars.step("web1", "shutting down (ACPI power button)")
        bars.stage("web1", "trimming /dev/sda1 (ext4)", 4)
        bars.warning("web1", "no guest agent")
        (task,) = progress.tasks
        assert (task.completed, task.total) == (1, 4)
        bars.end("web1")
        assert (task.completed, task.total, task.fields["step"]) == (2, 2, "done")
    lines = out.getvalue().splitlines()
    assert "  web1: shutting down (ACPI power button)" in lines
    assert "  web1: warning: no guest agent" in lines


def test_stage_lines_log_everything_at_info(caplog: pytest.LogCaptureFixture) -> None:
    lines = StageLines()
    with caplog.at_level(logging.INFO):
        lines.begin("web1", 3)
        lines.stage("web1", "launching the appliance")
        lines.step("web1", "shut off")
        lines.warning("web1", "forcing it off")
        lines.end("web1")
    assert [r.getMessage() for r in caplog.records] == [
        "web1: launching the appliance",
        "web1: shut off",
        "web1: warning: forcing it off",
    ]
    assert {r.levelno for r in caplog.records} == {logging.INFO}
