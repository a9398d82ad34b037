"""`virtbackup all`: the nightly job over every selected domain of the host."""

import json
import os
import socket
from contextlib import ExitStack
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import click

from virtbackup.adapters.discovery import discover
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.adapters.libvirt_conn import connect
from virtbackup.adapters.locks import host_lock
from virtbackup.adapters.store import BackupStore
from virtbackup.cli.backup_options import (
    BackupValues,
    Safekeeping,
    backup_options,
    domain_options,
    resolve_dest,
    resolve_safekeeping,
)
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.summary_view import print_json, print_summary, to_row
from virtbackup.core.config import Config, DomainSettings
from virtbackup.core.model import DomainFacts, Method
from virtbackup.core.planning import PlanOptions
from virtbackup.core.progress import LogSteps
from virtbackup.core.summary import summary_document
from virtbackup.engine.methods.lvm import SharedLvmSnapshots
from virtbackup.engine.runs.all_domains import Hooks, OptionsFor, RunInterrupted, run_all
from virtbackup.engine.runs.clean import clean
from virtbackup.engine.runs.domain_backup import BackupRunOptions, exit_code

SUMMARY_FILE = "virtbackup-last-run.json"


@click.command("all")
@click.option("--include", multiple=True, metavar="GLOB", help="Only domains matching GLOB.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip domains matching GLOB.")
@backup_options
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for a running `virtbackup all` to finish instead of exiting 3.",
)
@pass_globals
def all_command(
    options: GlobalOptions,
    /,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    wait: bool,
    **given: object,
) -> int:
    """Back up every domain of the host (the nightly job).

    Takes the host lock, finishes what interrupted runs left (overlays, freezes,
    stopped domains, partial backups), backs up each selected domain in turn (one
    failure never stops the others), applies each domain's retention once its new
    backup is complete, prints a summary and writes it to DEST/virtbackup-last-run.json.
    --include/--exclude replace the globs of the configuration file.
    """
    values = BackupValues(**given)  # type: ignore[arg-type]
    config = load_settings(options)
    store = BackupStore(resolve_dest(values, config))
    store.check_writable()
    safekeeping = resolve_safekeeping(values, config)
    state_dir = resolve_state_dir(options.state_dir)
    started = datetime.now(UTC)
    steps = LogSteps()
    lock = host_lock(state_dir)
    lock.acquire(wait=float("inf") if wait else 0.0)
    interrupted: RunInterrupted | None = None
    try:
        clean(state_dir, connect, steps, dests=[store.dest])
        with connect(options.uri) as conn, ExitStack() as run:
            domains = discover(
                conn, include=include or config.include, exclude=exclude or config.exclude
            )
            for domain in domains:
                store.check_domain_dir(domain.name)  # before any domain is touched

            with progress_sink(options.verbosity if not values.as_json else -1) as progress:
                reports = run_all(
                    conn,
                    domains,
                    store,
                    _options_for(values, config, options, safekeeping),
                    Hooks(config.hooks_before, config.hooks_after),
                    progress,
                    steps,
                    _local_zone(),
                    sources={Method.LVM: SharedLvmSnapshots(run)},
                    allowed_signers=config.allowed_signers,
                )
    except RunInterrupted as stop:  # the domain at hand is back: summary, then exit 130
        reports, interrupted = stop.reports, stop
    finally:
        lock.release()
    code = exit_code([r.outcome for r in reports])
    rows = [to_row(r.outcome, r.pruned, r.pruned_remote) for r in reports]
    document = summary_document(
        rows,
        host=socket.gethostname(),
        dest=str(store.dest),
        started=started,
        finished=datetime.now(UTC),
        exit_code=code,
    )
    _write_summary(store.dest / SUMMARY_FILE, document)
    try:
        if values.as_json:
            print_json(document)
        elif options.verbosity >= 0:
            print_summary(rows)
    finally:
        if interrupted is not None:
            raise interrupted  # even when the terminal is gone (OSError)
    return int(code)


def _options_for(
    values: BackupValues, config: Config, globals_: GlobalOptions, safekeeping: Safekeeping
) -> OptionsFor:
    def options_for(facts: DomainFacts) -> tuple[PlanOptions, BackupRunOptions, DomainSettings]:
        settings = config.for_domain(facts.name)
        plan, run = domain_options(values, config, settings, globals_, safekeeping)
        return plan, run, settings

    return options_for


def _local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def _write_summary(path: Path, document: dict[str, object]) -> None:
    """Atomically, 0600: monitoring never reads half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)  # a killed run's, or a planted link: never written through
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2, ensure_ascii=False)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temporary, path)
