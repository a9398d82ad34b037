"""`virtbackup verify BACKUP...`: check every digest; exit 1 on any mismatch."""

from pathlib import Path

import click

from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.output import error_line
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.remote_options import (
    chosen_remote,
    identity_option,
    remote_options,
    resolve_backup,
)
from virtbackup.core.errors import ExitCode, Interrupted, VirtbackupError
from virtbackup.engine.verify import verify_backup


@click.command("verify")
@click.argument("backups", nargs=-1, required=True)
@identity_option
@remote_options
@pass_globals
def verify_command(
    options: GlobalOptions,
    backups: tuple[str, ...],
    identity: Path | None,
    remote: bool,
    remote_location: str | None,
    host: str | None,
) -> int:
    """Re-read backups and check every digest. With --remote, BACKUP is DOMAIN/STAMP on
    the remote, downloaded and checked as it streams (nothing is written locally)."""
    remote_name = chosen_remote(remote, remote_location)
    config = load_settings(options) if remote_name is not None else None
    failed = False
    for name in backups:
        try:
            source = resolve_backup(name, remote_name, host, config)
            with progress_sink(options.verbosity) as progress:
                outcome = verify_backup(source, progress, identity=identity)
        except Interrupted:
            raise  # SIGINT/SIGTERM end the run, not just this domain
        except VirtbackupError as err:
            error_line(str(err))
            failed = True
            continue
        if outcome.ok:
            click.echo(f"ok\t{outcome.backup}")
        else:
            error_line(f"{outcome.backup}: {outcome.problem}")
            failed = True
    return ExitCode.FAILED if failed else ExitCode.OK
