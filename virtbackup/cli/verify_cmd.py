"""`virtbackup verify BACKUP...`: check every digest; exit 1 on any mismatch.
`virtbackup verify --all-chunks | --sample PERCENT [--dest DIR]`: the whole repository."""

import math
from pathlib import Path

import click

from virtbackup.cli.console import error_line
from virtbackup.cli.context import (
    GlobalOptions,
    chosen_dest,
    dest_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.remote_options import Reading, reading_options, resolve_backup
from virtbackup.core.errors import ExitCode, Interrupted, UsageError, VirtbackupError
from virtbackup.core.signature import SignatureState
from virtbackup.engine.datapath.verify import VerifyOutcome, verify_backup
from virtbackup.engine.datapath.verify_repository import ALL_CHUNKS, verify_repository
from virtbackup.engine.stores.remote import fetched_repository


@click.command("verify")
@click.argument("backups", nargs=-1)
@click.option(
    "--all-chunks",
    is_flag=True,
    help="Verify the whole repository of --dest: read every chunk once, check every "
    "backup's indexes; a damaged or missing chunk names every backup that uses it.",
)
@click.option(
    "--sample",
    type=click.FloatRange(0, ALL_CHUNKS, min_open=True),
    metavar="PERCENT",
    help="As --all-chunks, but read only a random PERCENT of the chunks (a nightly spot "
    "check); every index is still checked.",
)
@dest_option("With --all-chunks or --sample: the backup destination")
@reading_options
@pass_globals
def verify_command(
    options: GlobalOptions,
    backups: tuple[str, ...],
    all_chunks: bool,
    sample: float | None,
    dest: Path | None,
    reading: Reading,
) -> int:
    """Re-read backups and check every digest and signature. With --remote, BACKUP is
    DOMAIN/STAMP on the remote, downloaded and checked as it streams (nothing is written
    locally). Exit 2 when a key or file given is wrong (e.g. an identity that cannot
    decrypt the backup), else 1 on any damage."""
    if all_chunks or sample is not None:
        if sample is not None and math.isnan(sample):  # compares as inside any range
            raise UsageError("--sample: nan is not a percentage")
        if backups or all_chunks and sample is not None:
            raise UsageError("give either BACKUP..., --all-chunks or --sample PERCENT")
        if reading.remote or reading.remote_location:
            raise UsageError("--all-chunks and --sample check the repository of a local --dest")
        percent = ALL_CHUNKS if sample is None else sample
        return _verify_repository(options, dest, percent, reading.identity)
    if not backups:
        raise UsageError("nothing to verify", "give BACKUP..., --all-chunks or --sample PERCENT")
    if dest is not None:
        raise UsageError("--dest goes with --all-chunks or --sample; a BACKUP is a directory")
    remote_name, config, trust = reading.settle(options)
    failed, usage = False, False
    for name in backups:
        try:
            source = resolve_backup(name, remote_name, reading.host, config)
            with fetched_repository(source), progress_sink(options.verbosity) as progress:
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


def _verify_repository(
    options: GlobalOptions, dest: Path | None, sample: float, identity: Path | None
) -> int:
    """The whole repository; its encrypted chunks are decrypted and checked only with
    `identity` (without, that each one an index names exists)."""
    dest = chosen_dest(dest, load_settings(options))
    with progress_sink(options.verbosity) as progress:
        check = verify_repository(dest, progress, sample, identity=identity)
    for problem in check.problems:
        error_line(problem)
    state = "ok" if check.ok else "FAILED"
    click.echo(
        f"{state}\t{dest}: {check.chunks_read} of {check.chunks} chunks read, "
        f"indexes of {check.backups} backups checked, {len(check.problems)} problems"
    )
    return ExitCode.OK if check.ok else ExitCode.FAILED


def _signature_column(outcome: VerifyOutcome, allowed_signers: Path | None) -> str:
    """Nothing for an unsigned backup where no signature is expected (as before signing
    existed), else what the signature check said."""
    if outcome.signature.state == SignatureState.UNSIGNED and allowed_signers is None:
        return ""
    return f"\t{outcome.signature.describe()}"
