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
ONLY = RemoteSettings(location="offsite:backups", only=True)


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
        # offsite copies send the chunks the remote lacks; streaming with no local copy
        # sends a file per disk
        (given(remote="offsite:backups"), Config(), "repository"),
        (given(), Config(remote=REMOTE), "repository"),
        (given(layout="repository"), Config(remote=REMOTE), "repository"),
        (given(layout="stream"), Config(remote=REMOTE), "stream"),
        (given(remote_only=True), Config(), "stream"),
        (given(), Config(remote=ONLY), "stream"),
        (given(remote_only=False), Config(remote=ONLY), "repository"),
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
        (given(layout="repository", remote_only=True), Config(), "without a local copy"),
        (given(remote_only=True), Config(layout="repository"), "without a local copy"),
        (given(layout="repository"), Config(remote=ONLY), "without a local copy"),
    ],
)
def test_a_repository_asked_for_where_it_cannot_be_is_a_usage_error(
    values: BackupValues, config: Config, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        resolve_layout(values, config)
    assert raised.value.exit_code == 2
