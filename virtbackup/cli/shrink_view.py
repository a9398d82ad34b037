"""What `virtbackup shrink` shows and asks: the domains that can be shrunk, which to
shrink, a confirmation for each, and the results."""

from collections.abc import Sequence

from rich.markup import escape
from rich.prompt import Confirm, Prompt
from rich.table import Table
from rich.text import Text

from virtbackup.cli.console import stderr_console, stdout_console, text
from virtbackup.core.shrink_plan import DomainShrink, ShrinkMode, ShrinkOptions, ShrinkOutcome
from virtbackup.core.sizes import human_size


def pick(
    candidates: Sequence[DomainShrink],
    options: ShrinkOptions,
    estimated: dict[str, int | None] | None = None,
) -> list[DomainShrink]:
    """List the domains that can be shrunk, ask which, confirm each."""
    console = stderr_console
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
    return [by_name[n] for n in chosen if confirm(by_name[n], options)]


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


def confirm(plan: DomainShrink, options: ShrinkOptions) -> bool:
    how = "in place" if options.mode is ShrinkMode.IN_PLACE else "into a compact copy"
    if plan.needs_shutdown:
        how += ", shutting it down first and starting it again after"
    disks = escape(", ".join(d.target for d in plan.chosen))
    question = (
        f"Shrink [bold]{escape(plan.domain.name)}[/] ({disks}, {human_size(plan.allocated)} "
        f"allocated) {how}?"
    )
    return Confirm.ask(question, console=stderr_console, default=False)


def render_outcomes(outcomes: Sequence[ShrinkOutcome], mode: ShrinkMode) -> None:
    console = stdout_console()
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
