"""The CLI in a child process, as a user runs it: exit codes and messages come from main;
and the per-test state directory and backup destination it writes to."""

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

# virtbackup reads /etc/virtbackup.toml when no --config is given and that file exists: a
# host where it is installed would steer every test. Tests see only the configuration
# they write themselves; /dev/null is an empty one.
NO_HOST_CONFIG = ("--config", "/dev/null")


def without_host_config(args: Sequence[str]) -> list[str]:
    """`args`, with an empty configuration first unless they name one."""
    return list(args) if "--config" in args else [*NO_HOST_CONFIG, *args]


def virtbackup(
    *args: str,
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m virtbackup ARGS`; `state_dir` keeps journals and locks per test;
    without --config in ARGS, with an empty configuration (not the host's)."""
    environment = {**os.environ, **(env or {})}
    if state_dir is not None:
        environment["VIRTBACKUP_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "virtbackup", *without_host_config(args)],
        env=environment,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # like cron: nothing answers a prompt
    )


def virtbackup_in(
    state_dir: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """virtbackup with its own state directory (journals, locks)."""
    return virtbackup(*args, state_dir=state_dir, timeout=timeout)


def start_virtbackup(state_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`python -m virtbackup ARGS` started in the background, for a test to signal it
    mid-run (stdout and stdin closed, stderr piped); without --config in ARGS, with an
    empty configuration."""
    return subprocess.Popen(
        [sys.executable, "-m", "virtbackup", *without_host_config(args)],
        env={**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path
