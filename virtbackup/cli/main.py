"""The click group, its global options, and the one switch from errors to exit codes."""

import errno
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import click

from virtbackup import __version__
from virtbackup.adapters.terminal import detach_hung_up_terminal, note_terminals
from virtbackup.cli.console import error_line, setup_logging
from virtbackup.cli.context import DEFAULT_CONFIG, DEFAULT_URI, DIRECTORY, FILE, GlobalOptions
from virtbackup.core.errors import ExitCode, Interrupted, UsageError, VirtbackupError

log = logging.getLogger(__name__)

# Command name -> "module:attribute". A run imports only its own command's module, so
# that `virtbackup restore` does not wait for the doctor, nightly run, prune and verify
# engines and their views to be imported (about 40 ms of its start-up).
LAZY_COMMANDS = {
    "list": "virtbackup.cli.list_cmd:list_command",
    "backup": "virtbackup.cli.backup_cmd:backup_command",
    "all": "virtbackup.cli.all_cmd:all_command",
    "prune": "virtbackup.cli.prune_cmd:prune_command",
    "backups": "virtbackup.cli.backups_cmd:backups_command",
    "restore": "virtbackup.cli.restore_cmd:restore_command",
    "verify": "virtbackup.cli.verify_cmd:verify_command",
    "export": "virtbackup.cli.export_cmd:export_command",
    "files": "virtbackup.cli.files_cmd:files_command",
    "mount": "virtbackup.cli.mount_cmd:mount_command",
    "umount": "virtbackup.cli.mount_cmd:umount_command",
    "clean": "virtbackup.cli.clean_cmd:clean_command",
    "doctor": "virtbackup.cli.doctor_cmd:doctor_command",
    "shrink": "virtbackup.cli.shrink_cmd:shrink_command",
    "check": "virtbackup.cli.check_cmd:check_command",
    "gc": "virtbackup.cli.gc_cmd:gc_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when first looked up, not when it is built.

    `--help` of the group and completion of command names still load every module they
    show: the one-line help lives on the command object.
    """

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        # sorted, as click lists the commands it holds itself
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = self.lazy_commands[cmd_name].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
    type=FILE,
    help=f"Configuration file [default: {DEFAULT_CONFIG} when it exists].",
)
@click.option("-v", "--verbose", count=True, help="More output; -v shows each command run.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option(
    "--log-file",
    type=FILE,
    help="Also append plain timestamped log lines to FILE.",
)
@click.option(
    "--state-dir",
    type=DIRECTORY,
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
        why = "it is a symbolic link" if err.errno == errno.ELOOP else err.strerror
        raise UsageError(f"cannot open log file {log_file}: {why}") from None
    ctx.obj = GlobalOptions(uri=uri, config=config, verbosity=verbosity, state_dir=state_dir)


# Each ends the run as Interrupted (exit 130) once the domain at hand is put back:
# Ctrl-C, a service stop, and a hangup (ssh dropped, terminal closed).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGHUP:
        detach_hung_up_terminal()
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turn every outcome into one line and an exit code."""
    # Signals become an exception so that every `with` block and undo stack unwinds.
    note_terminals()
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:  # nohup: a hangup is to be ignored
            signal.signal(signum, _raise_interrupted)
    try:
        try:
            code = _run(argv)
        finally:
            # The run is over: more signals (a burst of SIGTERMs, repeated Ctrl-C) change
            # nothing now, and one that came during interpreter shutdown, when Python puts
            # the default handlers back, would kill us with 143 instead of this exit code.
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
    except Interrupted:  # a second signal while the last line was being written
        code = ExitCode.INTERRUPTED
    _flush_output()
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    try:
        # Commands return an exit code (or None for success); errors raise.
        returned = cli.main(args=argv, prog_name="virtbackup", standalone_mode=False)
    except click.exceptions.Abort:
        error_line("interrupted")
        return ExitCode.INTERRUPTED
    except click.ClickException as err:
        err.show()
        return ExitCode.USAGE
    except click.exceptions.Exit as err:
        return err.exit_code
    except (KeyboardInterrupt, Interrupted) as err:
        error_line(str(err) if isinstance(err, Interrupted) else "interrupted")
        return ExitCode.INTERRUPTED
    except VirtbackupError as err:
        error_line(str(err))
        return err.exit_code
    return returned if isinstance(returned, int) else ExitCode.OK


def _flush_output() -> None:
    """Flush what is buffered for stdout and stderr now: a reader that is gone must not
    turn into Python's "Exception ignored" at exit and status 120."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass  # not a file descriptor of ours: nothing left to protect
            finally:
                os.close(devnull)
