"""`virtbackup shrink [DOMAIN...]`: sparsify stopped domains' images, interactively.

Without a domain name it lists the shut-off domains with their allocated size and asks
which to shrink, then confirms each one; `--yes` (with names or `--all`) is for scripts.
Exit codes: 0 every domain shrunk; 1 a domain was refused (running, paused, compat=0.10,
...) or failed, the others were still shrunk; 2 usage errors, appliance setup errors
and too little space for copy mode; 3 another run holds a domain's lock.
"""

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from virtbackup.adapters.hypervisor.connection import Hypervisor, connect
from virtbackup.adapters.locks import prepare_state_dir
from virtbackup.cli.console import stderr_console, text
from virtbackup.cli.context import (
    EXISTING_DIRECTORY,
    GlobalOptions,
    json_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.progress_view import stage_sink
from virtbackup.cli.shrink_view import confirm, pick, render_outcomes
from virtbackup.core.errors import ExitCode, Interrupted, UsageError, VirtbackupError
from virtbackup.core.model import DomainFacts
from virtbackup.core.progress import StageSink
from virtbackup.core.shrink_plan import (
    COPY_FORMATS,
    DomainShrink,
    ShrinkOptions,
    ShrinkOutcome,
    check_options,
    plan_shrink,
)
from virtbackup.engine.shrink.domains import shrink_domain
from virtbackup.engine.shrink.guest_reclaim import Image, estimate_reclaimable

log = logging.getLogger(__name__)

# Below this much allocated, --estimate does not look inside: nothing worth the launch.
MIN_ESTIMATE = 16 * 1024 * 1024


@click.command("shrink")
@click.argument("domains", nargs=-1)
@click.option("--all", "all_domains", is_flag=True, help="Every domain that can be shrunk now.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only domains matching GLOB.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip domains matching GLOB.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask (for scripts).")
@click.option(
    "--shutdown",
    is_flag=True,
    help="Shut running domains down gracefully first and start them again afterwards.",
)
@click.option(
    "--shutdown-timeout",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    metavar="SECONDS",
    help="How long a guest gets to shut down.",
)
@click.option(
    "--ignore",
    multiple=True,
    metavar="FS|VG",
    help="Leave a filesystem (vda1, /dev/sda1, vg/lv) or volume group alone; repeatable.",
)
@click.option(
    "--to",
    "to_dir",
    type=EXISTING_DIRECTORY,
    help="Copy mode: write compact copies into DIR (the domain is not changed).",
)
@click.option(
    "--convert",
    type=click.Choice(COPY_FORMATS),
    help="Copy mode: output format; without --to the copy replaces the image.",
)
@click.option("--compress", is_flag=True, help="Copy mode: compressed qcow2.")
@click.option(
    "--tmp",
    "tmp_dir",
    type=EXISTING_DIRECTORY,
    help="Copy mode: directory for the overlays [default: /var/tmp].",
)
@click.option(
    "--amend-compat",
    is_flag=True,
    help="Upgrade qcow2 compat=0.10 images to 1.1 (qemu-img amend) instead of refusing.",
)
@click.option(
    "--estimate",
    is_flag=True,
    help="When asking: estimate what each domain would free (a read-only look, 10-20 s each).",
)
@json_option("the results")
@pass_globals
def shrink_command(
    options: GlobalOptions,
    domains: tuple[str, ...],
    all_domains: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    yes: bool,
    shutdown: bool,
    shutdown_timeout: int,
    ignore: tuple[str, ...],
    to_dir: Path | None,
    convert: str | None,
    compress: bool,
    tmp_dir: Path | None,
    amend_compat: bool,
    estimate: bool,
    as_json: bool,
) -> int:
    """Make stopped domains' images as small as they can be (libguestfs, in-process).

    In place by default: every filesystem is trimmed, swap and free space of guest
    volume groups discarded. --to or --convert write a new compact image instead.
    """
    config = load_settings(options)
    shrink_options = ShrinkOptions(
        ignore=ignore,
        shutdown=shutdown,
        shutdown_timeout=float(shutdown_timeout),
        to_dir=to_dir,
        convert=convert,
        compress=compress,
        tmp_dir=tmp_dir,
        amend_compat=amend_compat,
        appliance_timeout=float(config.appliance_timeout),
    )
    check_options(shrink_options)
    interactive = not yes
    if interactive and not (sys.stdin.isatty() and stderr_console.is_terminal):
        raise UsageError(
            "shrink asks before it changes images, but this is not a terminal",
            "name the domains and pass --yes",
        )
    if not domains and not all_domains and not interactive:
        raise UsageError("--yes needs the domains to shrink", "name them, or pass --all")
    prepare_state_dir(options.state_dir)
    outcomes: list[ShrinkOutcome] = []
    with connect(options.uri) as hypervisor:
        facts = hypervisor.discover(domains, include, exclude)
        plans = [plan_shrink(f, shrink_options) for f in facts]
        if not domains and not all_domains:
            eligible = [p for p in plans if p.eligible]
            found = estimates(eligible, estimate, shrink_options.appliance_timeout)
            plans = pick(eligible, shrink_options, found)
        else:
            if not domains:  # --all: what can be shrunk now
                plans = [p for p in plans if p.eligible]
            if interactive:  # refusals are not asked about: they are reported
                plans = [p for p in plans if not p.eligible or confirm(p, shrink_options)]
        with stage_sink(options.verbosity, as_json) as progress:
            for plan in plans:
                outcomes.append(
                    shrink_one(hypervisor, plan.domain, shrink_options, progress, options)
                )
    if as_json:
        click.echo(json.dumps([outcome_json(o) for o in outcomes], indent=2))
    else:
        render_outcomes(outcomes, shrink_options.mode)
    return ExitCode.OK if all(o.ok for o in outcomes) else ExitCode.FAILED


def shrink_one(
    hypervisor: Hypervisor,
    facts: DomainFacts,
    shrink_options: ShrinkOptions,
    progress: StageSink,
    options: GlobalOptions,
) -> ShrinkOutcome:
    outcome = shrink_domain(
        hypervisor, facts, shrink_options, progress, state_dir=options.state_dir
    )
    if outcome.error:
        log.error("%s", outcome.error)
    return outcome


# -- estimates ------------------------------------------------------------------------------


def estimates(
    candidates: Sequence[DomainShrink], wanted: bool, launch_timeout: float
) -> dict[str, int | None]:
    """Reclaimable bytes per domain, when asked for (one read-only appliance each)."""
    found: dict[str, int | None] = {}
    if not wanted:
        return found
    for plan in candidates:
        if plan.allocated < MIN_ESTIMATE:
            found[plan.domain.name] = None  # a launch would cost more than it could find
            continue
        images = [Image(d.target, d.path or "", d.format or "raw") for d in plan.chosen]
        with stderr_console.status(text(f"estimating {plan.domain.name} (read-only look inside)")):
            try:
                found[plan.domain.name] = estimate_reclaimable(images, launch_timeout)
            except VirtbackupError as err:
                if isinstance(err, (UsageError, Interrupted)):
                    raise
                log.warning("%s: no estimate: %s", plan.domain.name, err)
                found[plan.domain.name] = None
    return found


# -- JSON -----------------------------------------------------------------------------------


def outcome_json(outcome: ShrinkOutcome) -> dict[str, Any]:
    return {
        "domain": outcome.domain,
        "ok": outcome.ok,
        "error": outcome.error,
        "seconds": round(outcome.seconds, 3),
        "notes": list(outcome.notes),
        "disks": [
            {
                "target": d.target,
                "path": d.path,
                "output": d.output,
                "allocated_before": d.before,
                "allocated_after": d.after,
            }
            for d in outcome.disks
        ],
    }
