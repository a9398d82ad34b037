"""The one rule of the layout `backup` and `all` write (cli/backup_options.resolve_layout),
case by case; the commands that follow it are run in tests/cli/test_repository_cmd.py."""

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from virtbackup.cli.backup_options import BackupValues, resolve_layout
from virtbackup.core.config import Config, RemoteSettings
from virtbackup.core.errors import UsageError

RECIPIENTS = Path("/etc/virtbackup/recipients.txt")
REMOTE = RemoteSettings(location="offsite:backups")


def given(**options: Any) -> BackupValues:
    """The shared options with only `options` given on the command line."""
    unset: dict[str, Any] = {f.name: None for f in fields(BackupValues)}
    return BackupValues(**{**unset, "quiesce": "auto", "as_json": False, **options})


@pytest.mark.parametrize(
    ("values", "config", "layout"),
    [
        (given(), Config(), "repository"),
        (given(), Config(layout="stream"), "stream"),
        (given(layout="repository"), Config(layout="stream"), "repository"),
        (given(layout="stream"), Config(layout="repository"), "stream"),
        # offsite copies upload one file per disk: streams
        (given(remote="offsite:backups"), Config(), "stream"),
        (given(remote_only=True), Config(), "stream"),
        (given(), Config(remote=REMOTE), "stream"),
        (given(layout="stream"), Config(remote=REMOTE), "stream"),
        # encrypted runs too: the repository is encrypted as a whole
        (given(encrypt=RECIPIENTS), Config(), "repository"),
        (given(), Config(encrypt=RECIPIENTS), "repository"),
        (given(layout="stream", encrypt=RECIPIENTS), Config(), "stream"),
    ],
)
def test_the_layout_of_a_run(values: BackupValues, config: Config, layout: str) -> None:
    assert resolve_layout(values, config) == layout


@pytest.mark.parametrize(
    ("values", "config", "message"),
    [
        (given(layout="repository"), Config(remote=REMOTE), "cannot be copied to a remote"),
        (given(remote_only=True), Config(layout="repository"), "cannot be copied to a remote"),
    ],
)
def test_a_repository_asked_for_where_it_cannot_be_is_a_usage_error(
    values: BackupValues, config: Config, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        resolve_layout(values, config)
    assert raised.value.exit_code == 2
