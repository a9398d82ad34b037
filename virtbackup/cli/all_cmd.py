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
from virtbackup.cli.console import error_line
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.gc_view import gc_as_json, print_gc
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.run_end import finish_run
from virtbackup.cli.summary_view import RunSummary, summarise
from virtbackup.core.empty_run import nothing_to_back_up
from virtbackup.core.errors import ExitCode, VirtbackupError
from virtbackup.core.progress import LogSteps
from virtbackup.engine.runs.all_domains import AllExtras, Hooks
from virtbackup.engine.runs.clean import clean
from virtbackup.engine.runs.domain_loop import RunInterrupted, run_domains
from virtbackup.engine.stores.gc import GcResult, GcSettings, collect_after_retention
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
    backup is complete, runs gc once when DEST holds a repository (after every domain's
    retention, so the chunks of every removed backup go), prints a summary and writes it
    to DEST/virtbackup-last-run.json.
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
    gc: GcResult | None = None
    gc_problem: str | None = None
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
        gc, gc_problem = _collect_garbage(store.dest, config.gc_grace)
    except RunInterrupted as err:  # the domain at hand is back: summary, then exit 130
        reports, stop = err.reports, err
    finally:
        lock.release()
    summary = summarise(reports, store.dest, started)
    summary = replace(summary, document={**summary.document, "nothing_to_back_up": nothing})
    if stop is None:
        summary = _with_gc(summary, gc, gc_problem, config.gc_grace, store.label)
    _write_summary(store.dest / SUMMARY_FILE, summary.document)
    code = finish_run(
        summary, store, config.metrics_file, values.as_json, options.verbosity, stop, nothing
    )
    if gc is not None and not values.as_json and options.verbosity >= 0:
        print_gc(gc, store.label, config.gc_grace)
    if gc_problem is not None:
        error_line(f"gc: {gc_problem}")
    return code


def _collect_garbage(dest: Path, grace: int) -> tuple[GcResult | None, str | None]:
    """The one gc of the run, after every domain's retention; a failure of gc is the
    run's failure, reported after the summary, never a reason to lose it."""
    try:
        return collect_after_retention(dest, GcSettings(grace=grace)), None
    except VirtbackupError as err:
        return None, str(err)


def _with_gc(
    summary: RunSummary, gc: GcResult | None, problem: str | None, grace: int, where: str
) -> RunSummary:
    if gc is None and problem is None:
        return summary
    failed = problem is not None or (gc is not None and gc.missing_count > 0)
    code = max(summary.code, ExitCode.FAILED) if failed else summary.code
    collected = gc_as_json(gc, where, grace) if gc is not None else {"error": problem}
    document = {**summary.document, "gc": collected, "exit_code": int(code)}
    return replace(summary, code=ExitCode(code), document=document)


def _local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def _write_summary(path: Path, document: dict[str, object]) -> None:
    """Atomically, 0600: monitoring never reads half a file."""
    write_atomically(path, json.dumps(document, indent=2, ensure_ascii=False).encode())
