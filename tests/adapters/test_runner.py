"""Every external program runs through one function that fails in one clear line."""

import logging
import time

import pytest

from virtbackup.adapters import runner
from virtbackup.core.errors import CommandFailed, CommandTimedOut, ExitCode, MissingComponent


def test_run_returns_output() -> None:
    assert runner.run_text(["echo", "hello world"]) == "hello world\n"


def test_failure_carries_the_last_stderr_line() -> None:
    with pytest.raises(CommandFailed) as caught:
        runner.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"])
    assert caught.value.returncode == 3
    assert str(caught.value) == "sh exited with status 3: the real reason"
    assert caught.value.exit_code == ExitCode.FAILED


def test_unchecked_failure_is_returned() -> None:
    assert runner.run(["false"], check=False).returncode == 1


def test_missing_program_names_its_package() -> None:
    with pytest.raises(MissingComponent) as caught:
        runner.require_program("definitely-not-a-program")
    assert "definitely-not-a-program is not installed" in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


def test_commands_are_logged_for_verbose_mode(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="virtbackup.adapters.runner"):
        runner.run(["echo", "a b"])
    assert "run: echo 'a b'" in caplog.text


def test_a_program_that_outlives_its_bound_is_killed_and_one_error() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        runner.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert str(caught.value) == "sleep did not finish within 0.5 s"
    assert isinstance(caught.value, CommandFailed)  # callers that judge failures see it
