"""Global options shared by every command."""

from dataclasses import dataclass
from pathlib import Path

import click

from virtbackup.core.config import Config, load_config

DEFAULT_URI = "qemu:///system"
DEFAULT_CONFIG = Path("/etc/virtbackup.toml")


@dataclass(frozen=True)
class GlobalOptions:
    uri: str
    config: Path | None  # None: no file given and the default does not exist
    verbosity: int  # -1 quiet, 0 normal, 1+ verbose
    state_dir: Path | None = None  # journals and locks; None: $VIRTBACKUP_STATE_DIR or default


pass_globals = click.make_pass_decorator(GlobalOptions)


def load_settings(options: GlobalOptions) -> Config:
    """The configuration file's settings, or the defaults when there is none."""
    return load_config(options.config) if options.config is not None else Config()
