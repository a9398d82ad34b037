"""`virtbackup verify BACKUP...`: check every digest; exit 1 on any mismatch."""

from pathlib import Path

import click

from virtbackup.cli.console import error_line
from virtbackup.cli.context import GlobalOptions, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.remote_options import Reading, reading_options, resolve_backup
from virtbackup.core.errors import ExitCode, Interrupted, UsageError, VirtbackupError
from virtbackup.core.signature import SignatureState
from virtbackup.engine.datapath.verify import VerifyOutcome, verify_backup


@click.command("verify")
@click.argument("backups", nargs=-1, required=True)
@reading_options
@pass_globals
def verify_command(
    options: GlobalOptions,
    backups: tuple[str, ...],
    reading: Reading,
) -> int:
    """Re-read backups and check every digest and signature. With --remote, BACKUP is
    DOMAIN/STAMP on the remote, downloaded and checked as it streams (nothing is written
    locally). Exit 2 when a key or file given is wrong (e.g. an identity that cannot
    decrypt the backup), else 1 on any damage."""
    remote_name, config, trust = reading.settle(options)
    failed, usage = False, False
    for name in backups:
        try:
            source = resolve_backup(name, remote_name, reading.host, config)
            with progress_sink(options.verbosity) as progress:
                outcome = verify_backup(source, progress, identity=reading.identity, trust=trust)
        except Interrupted:
            raise  # SIGINT/SIGTERM end the run, not just this domain
        except VirtbackupError as err:
            error_line(str(err))
            usage = usage or isinstance(err, UsageError)
            failed = True
            continue
        if outcome.ok:
            click.echo(f"ok\t{outcome.backup}{_signature_column(outcome, trust.allowed_signers)}")
        else:
            error_line(f"{outcome.backup}: {outcome.problem}")
            failed = True
    if usage:
        return ExitCode.USAGE
    return ExitCode.FAILED if failed else ExitCode.OK


def _signature_column(outcome: VerifyOutcome, allowed_signers: Path | None) -> str:
    """Nothing for an unsigned backup where no signature is expected (as before signing
    existed), else what the signature check said."""
    if outcome.signature.state == SignatureState.UNSIGNED and allowed_signers is None:
        return ""
    return f"\t{outcome.signature.describe()}"
