"""The systemd units and the shell completion shipped in contrib/."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness.real import unavailable

CONTRIB = Path(__file__).parents[2] / "contrib"


def test_systemd_units_verify_clean() -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze", "apt-get install systemd")
    units = sorted(str(p) for p in (CONTRIB / "systemd").iterdir())
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # unknown keys and unparsable values are only warnings: none may appear
    assert result.stderr == ""
    service = (CONTRIB / "systemd" / "virtbackup.service").read_text()
    assert (
        "IOSchedulingClass=idle" in service and "ExecStart=/usr/local/bin/virtbackup all" in service
    )


def test_bash_completion_is_current_and_completes_commands() -> None:
    shipped = (CONTRIB / "virtbackup.bash-completion").read_text()
    env = dict(os.environ, _VIRTBACKUP_COMPLETE="bash_source")
    current = subprocess.run(
        [sys.executable, "-m", "virtbackup"], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert shipped == current
    env = dict(
        os.environ, _VIRTBACKUP_COMPLETE="bash_complete", COMP_WORDS="virtbackup ba", COMP_CWORD="1"
    )
    words = subprocess.run(
        [sys.executable, "-m", "virtbackup"], env=env, check=True, capture_output=True, text=True
    )
    assert words.stdout.split() == ["plain,backup", "plain,backups"]


def test_logrotate_snippet_parses(tmp_path: Path) -> None:
    if shutil.which("logrotate") is None:
        unavailable("logrotate", "apt-get install logrotate")
    result = subprocess.run(
        ["logrotate", "-d", "-s", str(tmp_path / "state"), str(CONTRIB / "virtbackup.logrotate")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()
    assert "rotating pattern: /var/log/virtbackup.log" in result.stdout + result.stderr
