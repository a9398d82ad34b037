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
from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, Prompt
from rich.table import Table
from rich.text import Text

from virtbackup.adapters.discovery import discover
from virtbackup.adapters.libvirt_conn import connect
from virtbackup.adapters.locks import prepare_state_dir
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.output import stderr_console, text
from virtbackup.cli.progress_view import stage_sink
from virtbackup.core.errors import ExitCode, Interrupted, UsageError, VirtbackupError
from virtbackup.core.model import DomainFacts
from virtbackup.core.progress import StageSink
from virtbackup.core.shrink_plan import (
    COPY_FORMATS,
    DomainShrink,
    ShrinkMode,
    ShrinkOptions,
    ShrinkOutcome,
    check_options,
    plan_shrink,
)
from virtbackup.core.sizes import human_size
from virtbackup.engine.shrink import Image, estimate_reclaimable, shrink_domain

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
    type=click.Path(file_okay=False, exists=True, path_type=Path),
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
    type=click.Path(file_okay=False, exists=True, path_type=Path),
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
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
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
    console = stderr_console
    outcomes: list[ShrinkOutcome] = []
    with connect(options.uri) as conn:
        facts = discover(conn, domains, include, exclude)
        plans = [plan_shrink(f, shrink_options) for f in facts]
        if not domains and not all_domains:
            eligible = [p for p in plans if p.eligible]
            found = estimates(console, eligible, estimate, shrink_options.appliance_timeout)
            plans = pick(console, eligible, shrink_options, found)
        else:
            if not domains:  # --all: what can be shrunk now
                plans = [p for p in plans if p.eligible]
            if interactive:  # refusals are not asked about: they are reported
                plans = [p for p in plans if not p.eligible or confirm(console, p, shrink_options)]
        with stage_sink(options.verbosity, as_json) as progress:
            for plan in plans:
                outcomes.append(shrink_one(conn, plan.domain, shrink_options, progress, options))
    if as_json:
        click.echo(json.dumps([outcome_json(o) for o in outcomes], indent=2))
    else:
        render_outcomes(Console(), outcomes, shrink_options.mode)
    return ExitCode.OK if all(o.ok for o in outcomes) else ExitCode.FAILED


def shrink_one(
    conn: Any,
    facts: DomainFacts,
    shrink_options: ShrinkOptions,
    progress: StageSink,
    options: GlobalOptions,
) -> ShrinkOutcome:
    outcome = shrink_domain(conn, facts, shrink_options, progress, state_dir=options.state_dir)
    if outcome.error:
        log.error("%s", outcome.error)
    return outcome


# -- asking ---------------------------------------------------------------------------------


def estimates(
    console: Console, candidates: Sequence[DomainShrink], wanted: bool, launch_timeout: float
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
        with console.status(text(f"estimating {plan.domain.name} (read-only look inside)")):
            try:
                found[plan.domain.name] = estimate_reclaimable(images, launch_timeout)
            except VirtbackupError as err:
                if isinstance(err, (UsageError, Interrupted)):
                    raise
                log.warning("%s: no estimate: %s", plan.domain.name, err)
                found[plan.domain.name] = None
    return found


def pick(
    console: Console,
    candidates: Sequence[DomainShrink],
    options: ShrinkOptions,
    estimated: dict[str, int | None] | None = None,
) -> list[DomainShrink]:
    """List the domains that can be shrunk, ask which, confirm each."""
    estimated = estimated or {}
    if not candidates:
        console.print("no domain can be shrunk now (only shut-off domains; see --shutdown)")
        return []
    table = Table(title="Domains that can be shrunk", title_justify="left")
    for heading, justify in (("#", "right"), ("domain", "left"), ("state", "left")):
        table.add_column(heading, justify=justify)  # type: ignore[arg-type]
    for heading in ("disks", "virtual", "allocated"):
        table.add_column(heading, justify="right")
    if estimated:
        table.add_column("reclaimable (est.)", justify="right")
    for number, plan in enumerate(candidates, 1):
        cells: list[str | Text] = [
            str(number),
            text(plan.domain.name),
            plan.domain.state.value,
            text(", ".join(d.target for d in plan.chosen)),
            human_size(plan.virtual_size),
            human_size(plan.allocated),
        ]
        if estimated:
            cells.append(human_size(estimated.get(plan.domain.name)))
        table.add_row(*cells)
    console.print(table)
    while True:
        answer = Prompt.ask(
            "Shrink which? numbers or names (1,3 or web1), 'all', or empty to quit",
            console=console,
            default="",
            show_default=False,
        )
        try:
            chosen = parse_choice(answer, [p.domain.name for p in candidates])
            break
        except ValueError as err:
            console.print(text(str(err), style="red"))
    by_name = {p.domain.name: p for p in candidates}
    return [by_name[n] for n in chosen if confirm(console, by_name[n], options)]


def parse_choice(answer: str, names: Sequence[str]) -> list[str]:
    """'1,3', '2 web1', 'all', '' -> the chosen names, in the order given."""
    answer = answer.strip()
    if not answer:
        return []
    if answer.lower() == "all":
        return list(names)
    chosen: list[str] = []
    for word in answer.replace(",", " ").split():
        if word.isdigit() and 1 <= int(word) <= len(names):
            name = names[int(word) - 1]
        elif word in names:
            name = word
        else:
            raise ValueError(f"{word!r} is not in the list")
        if name not in chosen:
            chosen.append(name)
    return chosen


def confirm(console: Console, plan: DomainShrink, options: ShrinkOptions) -> bool:
    how = "in place" if options.mode is ShrinkMode.IN_PLACE else "into a compact copy"
    if plan.needs_shutdown:
        how += ", shutting it down first and starting it again after"
    disks = escape(", ".join(d.target for d in plan.chosen))
    question = (
        f"Shrink [bold]{escape(plan.domain.name)}[/] ({disks}, {human_size(plan.allocated)} "
        f"allocated) {how}?"
    )
    return Confirm.ask(question, console=console, default=False)


# -- results --------------------------------------------------------------------------------


def render_outcomes(console: Console, outcomes: Sequence[ShrinkOutcome], mode: ShrinkMode) -> None:
    if not outcomes:
        console.print("nothing shrunk")
        return
    table = Table(title=f"virtbackup shrink ({mode.value})", title_justify="left")
    table.add_column("domain / disk")
    table.add_column("image", overflow="fold")
    for heading in ("before", "after", "saved", "time"):
        table.add_column(heading, justify="right", no_wrap=True)
    before_total = after_total = 0
    for outcome in outcomes:
        if outcome.error:
            table.add_row(
                text(outcome.domain, style="bold"), text(outcome.error, style="red"), "", "", "", ""
            )
            continue
        table.add_row(text(outcome.domain, style="bold"), "", "", "", "", f"{outcome.seconds:.0f}s")
        for disk in outcome.disks:
            before_total += disk.before or 0
            after_total += disk.after or 0
            table.add_row(
                text(f"  {disk.target}"),
                text(disk.output or disk.path),
                human_size(disk.before),
                human_size(disk.after),
                _saved(disk.before, disk.after),
                "",
            )
        for note in outcome.notes:
            table.add_row("", text(note, style="dim"), "", "", "", "")
    console.print(table)
    shrunk = sum(1 for o in outcomes if o.ok)
    seconds = sum(o.seconds for o in outcomes)
    console.print(
        f"{shrunk} of {len(outcomes)} domains shrunk: {human_size(before_total)} -> "
        f"{human_size(after_total)} allocated ({_saved(before_total, after_total)} saved) "
        f"in {seconds:.0f}s"
    )


def _saved(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "-"
    saved = before - after
    percent = f" ({100 * saved / before:.0f}%)" if before else ""
    return f"{human_size(saved)}{percent}"


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
