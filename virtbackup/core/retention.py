"""Retention: which backups of one domain to keep, as a pure function of their times.

Like restic's policy: `keep_last` keeps the N newest backups; `keep_daily` (weekly,
monthly, yearly) keeps the newest backup of each of the N most recent days (weeks, ...)
that have a backup at all. A backup is kept when any rule keeps it, and every kept backup
says why. The newest backup is always kept, whatever the policy, so retention can never
leave a domain without its latest backup.

A backup known to be bad (its last verification FAILED, or, where signatures are
expected, its signature is missing or bad) never fills a keep slot: the rules count only
the others, so `keep_last = 1` keeps the newest backup that is not known
bad, whatever failed after it, and that backup is always kept ("newest" or, with failed
ones after it, "newest not failed"). A failed backup is kept while no newer backup is
good (it may still be the best copy there is, and it is the newest one), and removed once
a newer good backup exists. When every backup of a domain failed, none is removed.

Periods are calendar periods in the time zone the caller passes (the host's local zone,
as an admin reads "daily"); weeks are ISO weeks.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    def is_empty(self) -> bool:
        return not any(
            (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)
        )


@dataclass(frozen=True)
class Candidate:
    """A complete backup as retention sees it: a name, when it was taken (aware), and
    whether it is known bad (`flaw` says why: a failed verification, a bad signature)."""

    name: str
    time: datetime
    failed: bool = False
    flaw: str = "failed verification"


@dataclass(frozen=True)
class Kept:
    candidate: Candidate
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    keep: list[Kept] = field(default_factory=list)  # newest first
    remove: list[Candidate] = field(default_factory=list)  # newest first


PeriodKey = Callable[[datetime], tuple[int, ...]]

PERIODS: list[tuple[str, str, PeriodKey]] = [
    ("keep_daily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: (t.year,)),
]


def apply_policy(candidates: Sequence[Candidate], policy: Policy, tz: tzinfo) -> Decision:
    ordered = sorted(candidates, key=lambda c: c.time, reverse=True)
    good = [c for c in ordered if not c.failed]
    reasons: dict[str, list[str]] = {c.name: [] for c in ordered}

    for rank, candidate in enumerate(good[: policy.keep_last]):
        reasons[candidate.name].append(f"last {rank + 1}/{policy.keep_last}")

    for attribute, label, period_of in PERIODS:
        wanted = getattr(policy, attribute)
        seen: list[tuple[int, ...]] = []
        for candidate in good:
            period = period_of(candidate.time.astimezone(tz))
            if seen and seen[-1] == period:
                continue  # an newer backup already stands for this period
            if len(seen) == wanted:
                break
            seen.append(period)
            reasons[candidate.name].append(f"{label} {len(seen)}/{wanted}")

    if good and not reasons[good[0].name]:
        newest = good[0] is ordered[0]
        reasons[good[0].name].append("newest" if newest else "newest not failed")
    for candidate in ordered:
        if not candidate.failed:
            break  # older failed backups have a newer good one: they go
        reasons[candidate.name].append(f"{candidate.flaw}, no newer good backup")

    keep = [Kept(c, tuple(reasons[c.name])) for c in ordered if reasons[c.name]]
    remove = [c for c in ordered if not reasons[c.name]]
    return Decision(keep=keep, remove=remove)


# How far in the future a backup's time may lie (clocks of hosts that share a store
# drift, a time zone is set wrong for a day) before it is taken for a planted one.
FUTURE_MARGIN = timedelta(days=1)


def placement_problem(
    directory: str, manifest_domain: str, times: Sequence[datetime], now: datetime
) -> str | None:
    """Why a readable backup in DEST/<directory>/ cannot count as a backup of that domain,
    or None. Its manifest must name that domain (a backup of another one copied there is
    not a backup of it), and neither its stamp nor its manifest may lie in the future
    (a planted far-future stamp would otherwise be "the newest" forever)."""
    if manifest_domain != directory:
        return f"its manifest is of domain {manifest_domain!r}, not of {directory!r}"
    latest = max(times)
    if latest > now + FUTURE_MARGIN:
        return f"its time {latest:%Y-%m-%d %H:%M:%S %Z} is in the future"
    return None
