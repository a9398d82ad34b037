"""Commands whose issue has not landed answer clearly instead of faking output."""

import subprocess
import sys

from virtbackup.cli.pending import COMMANDS


def test_pending_commands_say_not_implemented() -> None:
    invocations = {
        "list": [],
        "backup": ["d", "--dest", "/tmp"],
        "all": ["--dest", "/tmp"],
        "backups": ["--dest", "/tmp"],
        "restore": ["/tmp", "--to", "/tmp/x"],
        "verify": ["/tmp"],
        "prune": ["--dest", "/tmp"],
        "clean": [],
        "shrink": [],
        "doctor": [],
    }
    for command in COMMANDS:
        assert command.name is not None
        result = subprocess.run(
            [sys.executable, "-m", "virtbackup", command.name, *invocations[command.name]],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, command.name
        assert result.stderr == (
            f"virtbackup: error: 'virtbackup {command.name}' is not implemented yet\n"
        )
