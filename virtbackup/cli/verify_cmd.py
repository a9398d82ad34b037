"""`virtbackup verify BACKUP...`: check every digest; exit 1 on any mismatch."""

from pathlib import Path

import click

from virtbackup.cli.context import GlobalOptions, pass_globals
from virtbackup.cli.output import error_line
from virtbackup.cli.progress_view import progress_sink
from virtbackup.core.errors import ExitCode, VirtbackupError
from virtbackup.engine.verify import verify_backup


@click.command("verify")
@click.argument("backups", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_globals
def verify_command(options: GlobalOptions, backups: tuple[Path, ...]) -> int:
    """Re-read backups and check every digest."""
    failed = False
    for backup in backups:
        try:
            with progress_sink(options.verbosity) as progress:
                outcome = verify_backup(backup, progress)
        except VirtbackupError as err:
            error_line(str(err))
            failed = True
            continue
        if outcome.ok:
            click.echo(f"ok\t{backup}")
        else:
            error_line(f"{backup}: {outcome.problem}")
            failed = True
    return ExitCode.FAILED if failed else ExitCode.OK
