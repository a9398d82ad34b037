"""`virtbackup check`: the state of each domain's backups, judged as a monitoring plugin.

Pure: the caller gathers what there is (newest complete backup, its verification and
offsite copy, the domain's last attempt from core/run_record) and passes `now`.

Per domain, each finding has a state; the domain's state is the worst of them:
- excluded by the configuration: OK, nothing else is looked at;
- no complete backup: CRITICAL;
- newest backup older than --max-age: CRITICAL; older than --warn-age: WARNING;
- last attempt failed (failed, incomplete, interrupted) and not followed by a newer
  backup: CRITICAL; another run held the domain, or it had nothing to back up: WARNING;
- newest backup failed its verification: CRITICAL; not verified, with
  --require-verified: WARNING;
- with --remote, newest backup not on the remote: WARNING.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from virtbackup.core.run_record import LastAttempt

DEFAULT_MAX_AGE = 26 * 3600  # a nightly job, with two hours to spare

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(?:\d+[smhdw])+$")


class State(IntEnum):
    """The monitoring-plugin states; the value is the plugin's exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


def parse_duration(text: str) -> int:
    """'26h', '2d', '90m', '1d12h', '3600' (seconds) -> seconds. ValueError otherwise."""
    spoken = text.strip().lower()
    if spoken.isdigit():
        seconds = int(spoken)
    elif _DURATION.match(spoken):
        parts = re.findall(r"(\d+)([smhdw])", spoken)
        seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise ValueError(f"{text!r} is not a duration like 26h, 2d or 90m")
    if seconds < 1:
        raise ValueError(f"{text!r} is no time at all")
    return seconds


def format_duration(seconds: float) -> str:
    """3 d 2 h, 26 h 5 m, 12 m, 40 s: the two largest units that matter."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Limits:
    max_age: int = DEFAULT_MAX_AGE  # seconds; older is CRITICAL
    warn_age: int | None = None  # seconds; older is WARNING
    require_verified: bool = False

    def problem(self) -> str | None:
        if self.warn_age is not None and self.warn_age >= self.max_age:
            return "--warn-age must be shorter than --max-age"
        return None


@dataclass(frozen=True)
class NewestBackup:
    stamp: str
    finished: float  # Unix time the backup ended
    verified: bool | None  # None: never verified; False: its verification failed
    verify_problem: str | None = None
    offsite: bool | None = None  # None: not asked


@dataclass(frozen=True)
class DomainStatus:
    """What there is about one domain."""

    name: str
    excluded: bool = False
    newest: NewestBackup | None = None
    attempt: LastAttempt | None = None


@dataclass(frozen=True)
class Verdict:
    name: str
    state: State
    findings: tuple[tuple[State, str], ...]
    age: float | None  # seconds since the newest backup ended
    excluded: bool = False

    @property
    def reason(self) -> str:
        """The first finding that gave the domain its state."""
        return next(text for state, text in self.findings if state is self.state)


def judge(status: DomainStatus, limits: Limits, now: float) -> Verdict:
    if status.excluded:
        excluded = ((State.OK, "excluded by the configuration"),)
        return Verdict(status.name, State.OK, excluded, None, excluded=True)
    found: list[tuple[State, str]] = []
    newest = status.newest
    age = None if newest is None else max(0.0, now - newest.finished)
    if newest is None or age is None:
        found.append((State.CRITICAL, "no backup"))
    else:
        found.append(_age_finding(age, limits))
        found += _backup_findings(newest, limits)
    attempt = status.attempt
    if attempt is not None and (newest is None or attempt.finished >= newest.finished):
        found += _attempt_findings(attempt)
    state = max((s for s, _ in found), default=State.OK)
    return Verdict(status.name, state, tuple(found), age)


def _age_finding(age: float, limits: Limits) -> tuple[State, str]:
    text = f"newest backup {format_duration(age)} old"
    if age > limits.max_age:
        return State.CRITICAL, f"{text} (limit {format_duration(limits.max_age)})"
    if limits.warn_age is not None and age > limits.warn_age:
        return State.WARNING, f"{text} (warning at {format_duration(limits.warn_age)})"
    return State.OK, text


def _backup_findings(newest: NewestBackup, limits: Limits) -> list[tuple[State, str]]:
    found: list[tuple[State, str]] = []
    if newest.verified is False:
        found.append((State.CRITICAL, f"verification failed: {newest.verify_problem}"))
    elif newest.verified:
        found.append((State.OK, "verified"))
    else:
        found.append((State.WARNING if limits.require_verified else State.OK, "not verified"))
    if newest.offsite is True:
        found.append((State.OK, "offsite copy present"))
    elif newest.offsite is False:
        found.append((State.WARNING, "no offsite copy"))
    return found


def _attempt_findings(attempt: LastAttempt) -> list[tuple[State, str]]:
    if attempt.result == "ok":
        return [(State.OK, "last run ok")]
    state = State.CRITICAL if attempt.failed else State.WARNING
    return [(state, f"last run {attempt.result}: {attempt.message}")]


@dataclass(frozen=True)
class PluginOutput:
    state: State
    text: str  # status line, details, performance data


def plugin_output(verdicts: Sequence[Verdict], limits: Limits) -> PluginOutput:
    """The output as the monitoring-plugins guidelines want it: one status line with the
    performance data after `|`, then one line per domain, worst first."""
    state = max((v.state for v in verdicts), default=State.OK)
    counts = {s: sum(1 for v in verdicts if v.state is s) for s in State}
    if not verdicts:
        summary = "no domain to check"
    elif state is State.OK:
        summary = "1 domain ok" if len(verdicts) == 1 else f"{len(verdicts)} domains ok"
    else:
        bad = [v for v in verdicts if v.state is state]
        names = ", ".join(f"{v.name} ({v.reason})" for v in bad)
        summary = f"{counts[state]} of {len(verdicts)} domains {state.name.lower()}: {names}"
    perfdata = [
        perf_count("domains", len(verdicts)),
        *(perf_count(s.name.lower(), counts[s]) for s in State if s is not State.OK),
        *(_age_perf(v, limits) for v in verdicts if not v.excluded),
    ]
    ordered = sorted(verdicts, key=lambda v: (-v.state, v.name))
    details = [f"{v.state.name} {v.name}: {'; '.join(t for _, t in v.findings)}" for v in ordered]
    status_line = f"VIRTBACKUP {state.name} - {one_line(summary)} | {' '.join(perfdata)}"
    return PluginOutput(state, "\n".join([status_line, *(one_line(d) for d in details)]))


def unknown_output(problem: str) -> PluginOutput:
    return PluginOutput(State.UNKNOWN, f"VIRTBACKUP UNKNOWN - {one_line(problem)}")


def _age_perf(verdict: Verdict, limits: Limits) -> str:
    warn = "" if limits.warn_age is None else str(limits.warn_age)
    value = "U" if verdict.age is None else f"{int(verdict.age)}s"
    return f"{perf_label(verdict.name + ' age')}={value};{warn};{limits.max_age};0"


def perf_count(label: str, value: int) -> str:
    """A count: no thresholds, at least 0."""
    return f"{perf_label(label)}={value};;;0"


def perf_label(label: str) -> str:
    """A label as the guidelines allow: quoted (it may hold spaces), without `=`, `'`,
    `|` and control characters (each replaced by `_`)."""
    return "'" + re.sub(r"[='|\x00-\x1f\x7f]", "_", label) + "'"


def one_line(text: str) -> str:
    """Plugin output lines cannot hold `|` (it starts performance data) or a newline."""
    return re.sub(r"[|\r\n\t]", " ", text)
