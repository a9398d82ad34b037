"""core/check: durations, what each finding weighs, and the plugin's output, read back
by the monitoring-plugins guidelines' rules (tests/plugin_output.py)."""

import pytest
from plugin_output import parse_plugin_output

from virtbackup.core.check import (
    DomainStatus,
    Limits,
    NewestBackup,
    State,
    judge,
    parse_duration,
    plugin_output,
    unknown_output,
)
from virtbackup.core.run_record import LastAttempt

NOW = 1_800_000_000.0
HOUR = 3600


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("26h", 26 * HOUR),
        ("2d", 48 * HOUR),
        ("90m", 5400),
        ("1d12h", 36 * HOUR),
        ("45", 45),
        ("1w", 7 * 24 * HOUR),
        (" 30S ", 30),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "3x", "-2h", "1.5h", "0h", "2 d", "26hours"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration|no time"):
        parse_duration(text)


def attempt(result: str, finished: float, message: str = "") -> LastAttempt:
    return LastAttempt("web1", result, message, finished, 1.0, 0, 0, None, None)


def backup(
    age_hours: float, verified: bool | None = True, offsite: bool | None = None
) -> NewestBackup:
    return NewestBackup("20270115T080000Z", NOW - age_hours * HOUR, verified, "digest", offsite)


@pytest.mark.parametrize(
    ("status", "limits", "state", "reason"),
    [
        (DomainStatus("web1", newest=backup(2)), Limits(), State.OK, "newest backup 2h old"),
        (DomainStatus("web1"), Limits(), State.CRITICAL, "no backup"),
        (DomainStatus("web1", excluded=True), Limits(), State.OK, "excluded by the configuration"),
        (
            DomainStatus("web1", newest=backup(27)),
            Limits(),
            State.CRITICAL,
            "newest backup 1d 3h old (limit 1d 2h)",
        ),
        (
            DomainStatus("web1", newest=backup(27)),
            Limits(48 * HOUR, 24 * HOUR),
            State.WARNING,
            "newest backup 1d 3h old (warning at 1d)",
        ),
        (
            DomainStatus("web1", newest=backup(2), attempt=attempt("failed", NOW, "disk gone")),
            Limits(),
            State.CRITICAL,
            "last run failed: disk gone",
        ),
        (
            DomainStatus("web1", attempt=attempt("interrupted", NOW, "SIGTERM")),
            Limits(),
            State.CRITICAL,
            "no backup",
        ),
        # a failed attempt followed by a newer backup is over
        (
            DomainStatus("web1", newest=backup(2), attempt=attempt("failed", NOW - 3 * HOUR)),
            Limits(),
            State.OK,
            "newest backup 2h old",
        ),
        (
            DomainStatus("web1", newest=backup(2), attempt=attempt("locked", NOW, "held")),
            Limits(),
            State.WARNING,
            "last run locked: held",
        ),
        (
            DomainStatus("web1", newest=backup(2, verified=None)),
            Limits(),
            State.OK,
            "newest backup 2h old",
        ),
        (
            DomainStatus("web1", newest=backup(2, verified=None)),
            Limits(require_verified=True),
            State.WARNING,
            "not verified",
        ),
        (
            DomainStatus("web1", newest=backup(2, verified=False)),
            Limits(),
            State.CRITICAL,
            "verification failed: digest",
        ),
        (
            DomainStatus("web1", newest=backup(2, offsite=False)),
            Limits(),
            State.WARNING,
            "no offsite copy",
        ),
    ],
)
def test_each_finding_weighs(
    status: DomainStatus, limits: Limits, state: State, reason: str
) -> None:
    verdict = judge(status, limits, NOW)
    assert (verdict.state, verdict.reason) == (state, reason)


def test_output_follows_the_plugin_guidelines() -> None:
    limits = Limits(26 * HOUR, 20 * HOUR)
    verdicts = [
        judge(DomainStatus("web 1", newest=backup(2)), limits, NOW),
        judge(DomainStatus("db='x'|y"), limits, NOW),
        judge(DomainStatus("old", newest=backup(21)), limits, NOW),
        judge(DomainStatus("scratch", excluded=True), limits, NOW),
    ]
    output = plugin_output(verdicts, limits)
    parsed = parse_plugin_output(output.text, output.state)
    assert (parsed.service, parsed.state) == ("VIRTBACKUP", "CRITICAL")
    assert parsed.text == "1 of 4 domains critical: db='x' y (no backup)"
    assert parsed.long_text == [
        "CRITICAL db='x' y: no backup",
        "WARNING old: newest backup 21h old (warning at 20h); verified",
        "OK scratch: excluded by the configuration",
        "OK web 1: newest backup 2h old; verified",
    ]
    perf = parsed.perfdata
    assert {k: perf[k].value for k in ("domains", "warning", "critical")} == {
        "domains": 4,
        "warning": 1,
        "critical": 1,
    }
    assert perf["web 1 age"].value == 2 * HOUR and perf["web 1 age"].unit == "s"
    assert (perf["old age"].warn, perf["old age"].crit) == (str(20 * HOUR), str(26 * HOUR))
    assert perf["db__x__y age"].value is None  # no backup: U
    assert "scratch age" not in perf


def test_all_ok_and_nothing_to_check_and_unknown() -> None:
    ok = plugin_output([judge(DomainStatus("a", newest=backup(1)), Limits(), NOW)], Limits())
    assert parse_plugin_output(ok.text, ok.state).text == "1 domain ok"
    empty = plugin_output([], Limits())
    assert parse_plugin_output(empty.text, empty.state).text == "no domain to check"
    unknown = unknown_output("cannot connect\nto libvirt")
    parsed = parse_plugin_output(unknown.text, unknown.state)
    assert (parsed.state, parsed.text, parsed.perfdata) == (
        "UNKNOWN",
        "cannot connect to libvirt",
        {},
    )


def test_warn_age_must_be_below_max_age() -> None:
    assert Limits(HOUR, HOUR).problem() == "--warn-age must be shorter than --max-age"
    assert Limits(2 * HOUR, HOUR).problem() is None
