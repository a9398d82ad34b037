"""The command tree, global options and the mapping of outcomes to exit codes."""

import subprocess
import sys

import click
import pytest
from harness.cli import virtbackup

from virtbackup import __version__
from virtbackup.cli.main import LAZY_COMMANDS, cli

COMMANDS = [
    "list",
    "backup",
    "all",
    "backups",
    "restore",
    "verify",
    "export",
    "files",
    "mount",
    "umount",
    "prune",
    "clean",
    "shrink",
    "doctor",
    "check",
    "gc",
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


def test_the_group_lists_every_command_in_help_order() -> None:
    # a misspelt name or "module:attribute" in the lazy mapping fails here, not at a user's run
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command)
        assert command.name == name


def test_running_one_command_imports_no_other_command() -> None:
    # start-up time: `virtbackup restore` must not pay for importing `all`, `shrink`, ...
    # A fresh interpreter, since this one has long imported every command.
    code = (
        "import sys\n"
        "from virtbackup.cli import main\n"
        "try:\n"
        "    main(['restore', '--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "print(*sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: virtbackup restore")
    loaded = set(result.stderr.split())
    assert "virtbackup.cli.restore_cmd" in loaded
    others = {target.split(":")[0] for name, target in LAZY_COMMANDS.items() if name != "restore"}
    assert "virtbackup.cli.shrink_cmd" in others
    assert loaded.isdisjoint(others)
    # nor the backup engine (libvirt, consistency methods, the stream writer)
    assert loaded.isdisjoint(
        {"virtbackup.engine.runs.domain_backup", "virtbackup.engine.datapath.stream_writer"}
    )
