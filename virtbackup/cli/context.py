"""Global options shared by every command."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from virtbackup.core.config import Config, load_config
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import LAYOUT_REPOSITORY, LAYOUT_STREAM

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URI = "qemu:///system"
DEFAULT_CONFIG = Path("/etc/virtbackup.toml")


@dataclass(frozen=True)
class GlobalOptions:
    uri: str
    config: Path | None  # None: no file given and the default does not exist
    verbosity: int  # -1 quiet, 0 normal, 1+ verbose
    state_dir: Path | None = None  # journals and locks; None: $VIRTBACKUP_STATE_DIR or default


pass_globals = click.make_pass_decorator(GlobalOptions)

FILE = click.Path(dir_okay=False, path_type=Path)
DIRECTORY = click.Path(file_okay=False, path_type=Path)
EXISTING_DIRECTORY = click.Path(file_okay=False, exists=True, path_type=Path)


def json_option(what: str) -> Callable[[F], F]:
    """The `--json` flag of a command that prints `what`."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def dest_option(what: str = "Backup destination directory") -> Callable[[F], F]:
    """The `--dest DIR` option of a command that works on backups: `what` DIR is."""
    return click.option(
        "--dest", type=DIRECTORY, help=f"{what} [default: `dest` of the configuration file]."
    )


def chosen_dest(
    dest: Path | None, config: Config, instead: str = "set dest in the config file"
) -> Path:
    """The backup destination: --dest, else the configuration file's `dest`; UsageError
    when neither names one (`instead`: what else the command would take)."""
    chosen = dest or config.dest
    if chosen is None:
        raise UsageError("no backup destination", f"give --dest DIR or {instead}")
    return chosen


def load_settings(options: GlobalOptions) -> Config:
    """The configuration file's settings, or the defaults when there is none."""
    return load_config(options.config) if options.config is not None else Config()


def configured_layout(config: Config) -> str:
    """The layout `backup` and `all` write without --layout (cli/backup_options): the
    configured one, else the repository, or streams for runs with an offsite copy."""
    if config.layout is not None:
        return config.layout
    return LAYOUT_STREAM if config.remote is not None else LAYOUT_REPOSITORY
