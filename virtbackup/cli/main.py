"""The click group, its global options, and the one switch from errors to exit codes."""

import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from virtbackup import __version__
from virtbackup.cli.all_cmd import all_command
from virtbackup.cli.backup_cmd import backup_command
from virtbackup.cli.backups_cmd import backups_command
from virtbackup.cli.clean_cmd import clean_command
from virtbackup.cli.context import DEFAULT_CONFIG, DEFAULT_URI, GlobalOptions
from virtbackup.cli.doctor_cmd import doctor_command
from virtbackup.cli.list_cmd import list_command
from virtbackup.cli.output import error_line, setup_logging
from virtbackup.cli.prune_cmd import prune_command
from virtbackup.cli.restore_cmd import restore_command
from virtbackup.cli.shrink_cmd import shrink_command
from virtbackup.cli.verify_cmd import verify_command
from virtbackup.core.errors import ExitCode, Interrupted, UsageError, VirtbackupError

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="virtbackup")
@click.option(
    "-c",
    "--connect",
    "uri",
    default=DEFAULT_URI,
    show_default=True,
    metavar="URI",
    help="libvirt connection URI, as for virsh.",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Configuration file [default: {DEFAULT_CONFIG} when it exists].",
)
@click.option("-v", "--verbose", count=True, help="More output; -v shows each command run.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also append plain timestamped log lines to FILE.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="VIRTBACKUP_STATE_DIR",
    help="Where run journals and locks live [default: /var/lib/virtbackup].",
)
@click.pass_context
def cli(
    ctx: click.Context,
    uri: str,
    config: Path | None,
    verbose: int,
    quiet: bool,
    log_file: Path | None,
    state_dir: Path | None,
) -> None:
    """Back up, restore and shrink the virtual machines of a libvirt host."""
    if config is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    verbosity = -1 if quiet else verbose
    try:
        setup_logging(verbosity, log_file)
    except OSError as err:
        raise UsageError(f"cannot open log file {log_file}: {err.strerror}") from None
    ctx.obj = GlobalOptions(uri=uri, config=config, verbosity=verbosity, state_dir=state_dir)


cli.add_command(list_command)
cli.add_command(backup_command)
cli.add_command(all_command)
cli.add_command(prune_command)
cli.add_command(backups_command)
cli.add_command(restore_command)
cli.add_command(verify_command)
cli.add_command(clean_command)
cli.add_command(doctor_command)
cli.add_command(shrink_command)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turn every outcome into one line and an exit code."""
    # SIGTERM becomes an exception so that every `with` block and undo stack unwinds.
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        # Commands return an exit code (or None for success); errors raise.
        returned = cli.main(args=argv, prog_name="virtbackup", standalone_mode=False)
    except click.exceptions.Abort:
        error_line("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as err:
        err.show()
        sys.exit(ExitCode.USAGE)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except VirtbackupError as err:
        error_line(str(err))
        sys.exit(err.exit_code)
    sys.exit(returned if isinstance(returned, int) else ExitCode.OK)
