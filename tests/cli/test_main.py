"""The command tree, global options and the mapping of outcomes to exit codes."""

import pytest
from harness.cli import virtbackup

from virtbackup import __version__

COMMANDS = [
    "list",
    "backup",
    "all",
    "backups",
    "restore",
    "verify",
    "prune",
    "clean",
    "shrink",
    "doctor",
]


def test_version() -> None:
    result = virtbackup("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"virtbackup, version {__version__}"


def test_help_lists_the_whole_command_tree() -> None:
    result = virtbackup("--help")
    assert result.returncode == 0
    listed = {
        line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()
    }
    assert listed == set(COMMANDS)
    for option in ("--connect", "--config", "--verbose", "--quiet"):
        assert option in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = virtbackup(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: virtbackup {command}")


def test_unknown_command_is_a_usage_error() -> None:
    result = virtbackup("frobnicate")
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_option_value_is_a_usage_error(tmp_path: object) -> None:
    result = virtbackup("backup", "dom", "--dest", "/tmp", "--method", "teleport")
    assert result.returncode == 2
    assert "'teleport' is not one of" in result.stderr
