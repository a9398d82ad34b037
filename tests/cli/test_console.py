"""Log output: plain lines for cron, priorities for the journal, and an optional log file."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from harness.cli import virtbackup


def test_log_file_gets_timestamped_lines_and_the_error(tmp_path: Path) -> None:
    log = tmp_path / "virtbackup.log"
    result = virtbackup("--log-file", str(log), "-c", "bogus:///x", "list")
    assert result.returncode == 2
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    lines = log.read_text().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ERROR cannot connect to .*", lines[-1]
    )
    # appended, not replaced, by the next run
    virtbackup("--log-file", str(log), "-c", "bogus:///x", "list")
    assert len(log.read_text().splitlines()) == 2 * len(lines)


def test_unwritable_log_file_is_a_usage_error(tmp_path: Path) -> None:
    result = virtbackup("--log-file", str(tmp_path / "missing" / "x.log"), "list")
    assert result.returncode == 2
    assert result.stderr.startswith("virtbackup: error: cannot open log file ")
    assert "No such file or directory" in result.stderr


def test_a_log_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"precious\n")
    log = tmp_path / "virtbackup.log"
    log.symlink_to(decoy)
    result = virtbackup("--log-file", str(log), "-c", "bogus:///x", "list")
    assert result.returncode == 2
    assert result.stderr == (
        f"virtbackup: error: cannot open log file {log}: it is a symbolic link\n"
    )
    assert decoy.read_bytes() == b"precious\n"


def test_journal_lines_carry_syslog_priorities() -> None:
    code = (
        "import logging; from virtbackup.cli.console import setup_logging;"
        "setup_logging(1); logging.getLogger('x').warning('careful');"
        "logging.getLogger('x').debug('detail')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "JOURNAL_STREAM": "8:1234"},
        check=True,
        capture_output=True,
        text=True,
    )
    assert result.stderr.splitlines() == ["<4>careful", "<7>detail"]


def test_plain_lines_when_not_a_terminal() -> None:
    code = (
        "import logging; from virtbackup.cli.console import setup_logging;"
        "setup_logging(0); logging.getLogger('x').info('hello'); logging.getLogger('x').debug('no')"
    )
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    assert re.fullmatch(r"\S+ INFO hello\n", result.stderr)
