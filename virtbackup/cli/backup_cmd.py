"""`virtbackup backup DOMAIN... --dest DIR`: back up the named domains now."""

import socket
from contextlib import ExitStack
from datetime import UTC, datetime

import click

from virtbackup.adapters.discovery import discover
from virtbackup.adapters.libvirt_conn import connect
from virtbackup.adapters.locks import prepare_state_dir
from virtbackup.adapters.store import BackupStore
from virtbackup.cli.backup_options import (
    BackupValues,
    backup_options,
    domain_options,
    resolve_dest,
    resolve_safekeeping,
)
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.summary_view import print_json, print_summary, to_row
from virtbackup.core.errors import Interrupted
from virtbackup.core.model import Method
from virtbackup.core.planning import plan_domain
from virtbackup.core.progress import LogSteps
from virtbackup.core.summary import summary_document
from virtbackup.engine.methods.lvm import SharedLvmSnapshots
from virtbackup.engine.runs.domain_backup import back_up_domain, exit_code, interrupted_outcomes


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
    store = BackupStore(resolve_dest(values, config))
    store.check_writable()
    prepare_state_dir(options.state_dir)
    safekeeping = resolve_safekeeping(values, config)
    started = datetime.now(UTC)
    outcomes = []
    stop: Interrupted | None = None
    with connect(options.uri) as conn, ExitStack() as run:
        sources = {Method.LVM: SharedLvmSnapshots(run)}
        facts = discover(conn, names=domains)
        for domain in facts:
            store.check_domain_dir(domain.name)  # before any domain is touched
        with progress_sink(options.verbosity if not values.as_json else -1) as progress:
            for index, domain in enumerate(facts):
                try:
                    plan_options, run_options = domain_options(
                        values, config, config.for_domain(domain.name), options, safekeeping
                    )
                    plan = plan_domain(domain, plan_options)
                    outcomes.append(
                        back_up_domain(
                            conn, plan, store, run_options, progress, LogSteps(), sources=sources
                        )
                    )
                except Interrupted as err:  # the domain is back; no other one is touched
                    outcomes += interrupted_outcomes([d.name for d in facts[index:]], err)
                    stop = err
                    break
    code = exit_code(outcomes)
    rows = [to_row(outcome) for outcome in outcomes]
    try:
        if values.as_json:
            print_json(
                summary_document(
                    rows,
                    host=socket.gethostname(),
                    dest=str(store.dest),
                    started=started,
                    finished=datetime.now(UTC),
                    exit_code=code,
                )
            )
        elif options.verbosity >= 0:
            print_summary(rows)
    finally:
        if stop is not None:
            raise stop  # exit 130 with its one line, even when the terminal is gone
    return int(code)
