"""--allowed-signers and --allow-unsigned: whose signatures the commands that read
backups trust (verify, restore, backups)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from virtbackup.cli.context import FILE
from virtbackup.core.config import Config
from virtbackup.engine.stores.backup_access import Trust

F = TypeVar("F", bound=Callable[..., Any])

allowed_signers_option = click.option(
    "--allowed-signers",
    type=FILE,
    metavar="FILE",
    help="OpenSSH allowed-signers file: backups must be signed by one of its keys "
    "[default: `allowed_signers` of the configuration, else signatures are not required].",
)

allow_unsigned_option = click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Accept a backup without signature although allowed_signers is set "
    "(a bad signature is never accepted).",
)


def trust_options(command: F) -> F:
    return allowed_signers_option(allow_unsigned_option(command))


def resolve_trust(allowed_signers: Path | None, allow_unsigned: bool, config: Config) -> Trust:
    return Trust(allowed_signers or config.allowed_signers, allow_unsigned)
