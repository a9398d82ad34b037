"""`virtbackup all`: the nightly job over every selected domain of the host."""

import json
from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import click

from virtbackup.adapters.atomic_file import write_atomically
from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.adapters.locks import host_lock
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
from virtbackup.core.empty_run import nothing_to_back_up
from virtbackup.core.progress import LogSteps
from virtbackup.engine.runs.all_domains import AllExtras, Hooks
from virtbackup.engine.runs.clean import clean
from virtbackup.engine.runs.domain_loop import RunInterrupted, run_domains
from virtbackup.engine.stores.local import LocalStore

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
    store = LocalStore(resolve_dest(values, config))
    store.check_writable()
    safekeeping = resolve_safekeeping(values, config)
    state_dir = resolve_state_dir(options.state_dir)
    started = datetime.now(UTC)
    steps = LogSteps()
    extras = AllExtras(
        Hooks(config.hooks_before, config.hooks_after), _local_zone(), config.allowed_signers
    )
    lock = host_lock(state_dir)
    lock.acquire(wait=float("inf") if wait else 0.0)
    stop: RunInterrupted | None = None
    nothing: str | None = None
    try:
        clean(state_dir, connect, steps, dests=[store.dest])
        with connect(options.uri) as conn:
            domains = conn.discover(
                include=include or config.include, exclude=exclude or config.exclude
            )
            nothing = nothing_to_back_up(len(conn.domain_names()), len(domains))
            jobs = domain_jobs(values, config, options, safekeeping, domains)
            with progress_sink(options.verbosity if not values.as_json else -1) as progress:
                reports = run_domains(conn, jobs, store, progress, steps, extras)
    except RunInterrupted as err:  # the domain at hand is back: summary, then exit 130
        reports, stop = err.reports, err
    finally:
        lock.release()
    summary = summarise(reports, store.dest, started)
    summary = replace(summary, document={**summary.document, "nothing_to_back_up": nothing})
    _write_summary(store.dest / SUMMARY_FILE, summary.document)
    return finish_run(
        summary, store, config.metrics_file, values.as_json, options.verbosity, stop, nothing
    )


def _local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def _write_summary(path: Path, document: dict[str, object]) -> None:
    """Atomically, 0600: monitoring never reads half a file."""
    write_atomically(path, json.dumps(document, indent=2, ensure_ascii=False).encode())
