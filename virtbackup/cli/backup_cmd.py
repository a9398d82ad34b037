"""`virtbackup backup DOMAIN... --dest DIR`: back up the named domains now."""

from datetime import UTC, datetime

import click

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.adapters.locks import prepare_state_dir
from virtbackup.cli.backup_options import (
    BackupValues,
    backup_options,
    domain_jobs,
    resolve_dest,
    resolve_safekeeping,
)
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.run_end import finish_run
from virtbackup.cli.summary_view import summarise
from virtbackup.core.progress import LogSteps
from virtbackup.engine.runs.domain_loop import RunInterrupted, run_domains
from virtbackup.engine.stores.local import LocalStore


@click.command("backup")
@click.argument("domains", nargs=-1, required=True)
@backup_options
@pass_globals
def backup_command(options: GlobalOptions, /, domains: tuple[str, ...], **given: object) -> int:
    """Back up the named domains into DEST/<domain>/<UTC stamp>/.

    Shut-off domains are read directly; running and paused ones are made consistent by
    --method (auto: an external libvirt snapshot, merged back afterwards). Every domain
    ends in the state it was in. Exit 1 when a domain failed, 3 when another run holds
    one, the others are backed up all the same.
    """
    values = BackupValues(**given)  # type: ignore[arg-type]
    config = load_settings(options)
    store = LocalStore(resolve_dest(values, config))
    store.check_writable()
    prepare_state_dir(options.state_dir)
    safekeeping = resolve_safekeeping(values, config)
    started = datetime.now(UTC)
    stop: RunInterrupted | None = None
    with connect(options.uri) as conn:
        jobs = domain_jobs(values, config, options, safekeeping, conn.discover(names=domains))
        with progress_sink(options.verbosity if not values.as_json else -1) as progress:
            try:
                reports = run_domains(conn, jobs, store, progress, LogSteps())
            except RunInterrupted as err:  # the domain at hand is back: summary, then exit 130
                reports, stop = err.reports, err
    summary = summarise(reports, store.dest, started)
    return finish_run(summary, store, config.metrics_file, values.as_json, options.verbosity, stop)
