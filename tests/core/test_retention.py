"""Retention policy: parametrized cases with their expected keep/remove sets."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from virtbackup.core.retention import Candidate, Policy, apply_policy, placement_problem

BERLIN_SUMMER = timezone(timedelta(hours=2))


def at(stamp: str) -> Candidate:
    return Candidate(stamp, datetime.fromisoformat(stamp).replace(tzinfo=UTC))


def nightly(days: int, start: str = "2026-01-01T01:00") -> list[Candidate]:
    first = datetime.fromisoformat(start).replace(tzinfo=UTC)
    return [Candidate(f"n{i:03d}", first + timedelta(days=i)) for i in range(days)]


def kept_names(candidates: list[Candidate], policy: Policy) -> list[str]:
    return [k.candidate.name for k in apply_policy(candidates, policy, UTC).keep]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Policy(keep_last=3), ["n099", "n098", "n097"]),
        (Policy(keep_daily=2), ["n099", "n098"]),
        # ISO weeks: 2026-04-10 (n099) is a Friday, the week before ends Sunday 04-05 (n094)
        (Policy(keep_weekly=3), ["n099", "n094", "n087"]),
        # newest of April, March (03-31 = n089), February (02-28 = n058)
        (Policy(keep_monthly=3), ["n099", "n089", "n058"]),
        (Policy(keep_yearly=5), ["n099"]),
        (Policy(keep_last=1, keep_monthly=2), ["n099", "n089"]),
        # an empty policy still keeps the newest
        (Policy(), ["n099"]),
    ],
)
def test_policies_over_a_hundred_nightly_backups(policy: Policy, expected: list[str]) -> None:
    assert kept_names(nightly(100), policy) == expected


def test_removed_are_exactly_the_others() -> None:
    candidates = nightly(30)
    decision = apply_policy(candidates, Policy(keep_last=5, keep_weekly=2), UTC)
    kept = {k.candidate.name for k in decision.keep}
    removed = {c.name for c in decision.remove}
    assert kept.isdisjoint(removed)
    assert kept | removed == {c.name for c in candidates}


def test_reasons_name_every_rule_that_keeps() -> None:
    decision = apply_policy(nightly(10), Policy(keep_last=2, keep_daily=1, keep_yearly=1), UTC)
    assert decision.keep[0].reasons == ("last 1/2", "daily 1/1", "yearly 1/1")
    assert decision.keep[1].reasons == ("last 2/2",)
    assert apply_policy(nightly(3), Policy(), UTC).keep[0].reasons == ("newest",)


def test_several_backups_a_day_keep_the_newest_of_each_day() -> None:
    candidates = [at("2026-03-01T01:00"), at("2026-03-01T13:00"), at("2026-03-02T01:00")]
    assert kept_names(candidates, Policy(keep_daily=2)) == [
        "2026-03-02T01:00",
        "2026-03-01T13:00",
    ]


def test_days_are_counted_in_the_callers_time_zone() -> None:
    # 22:30 UTC on the 1st is 00:30 on the 2nd in Berlin (summer): same local day as 09:00.
    candidates = [at("2026-06-01T22:30"), at("2026-06-02T09:00")]
    in_utc = apply_policy(candidates, Policy(keep_daily=2), UTC)
    in_berlin = apply_policy(candidates, Policy(keep_daily=2), BERLIN_SUMMER)
    assert len(in_utc.keep) == 2
    assert [k.candidate.name for k in in_berlin.keep] == ["2026-06-02T09:00"]


def test_order_of_input_does_not_matter() -> None:
    candidates = nightly(40)
    policy = Policy(keep_last=2, keep_weekly=3)
    assert kept_names(candidates[::-1], policy) == kept_names(candidates, policy)


def test_no_backups_no_decision() -> None:
    decision = apply_policy([], Policy(keep_last=3), UTC)
    assert decision.keep == [] and decision.remove == []


def days(marks: str) -> list[Candidate]:
    """One backup a day from 2026-03-01, oldest first: 'g' good (verified ok or never
    verified), 'F' known bad (last verification FAILED). Named d0, d1, ..."""
    first = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    return [
        Candidate(f"d{i}", first + timedelta(days=i), failed=mark == "F")
        for i, mark in enumerate(marks)
    ]


FAILED = "failed verification, no newer good backup"


@pytest.mark.parametrize(
    ("marks", "policy", "kept", "removed"),
    [
        # the newest failed verification: the good one before it is the one kept
        ("gF", Policy(keep_last=1), {"d1": (FAILED,), "d0": ("last 1/1",)}, []),
        ("ggF", Policy(keep_last=1), {"d2": (FAILED,), "d1": ("last 1/1",)}, ["d0"]),
        # failed backups do not fill the daily slots either
        (
            "gggFF",
            Policy(keep_daily=2),
            {"d4": (FAILED,), "d3": (FAILED,), "d2": ("daily 1/2",), "d1": ("daily 2/2",)},
            ["d0"],
        ),
        # a failed backup with a newer good one goes, even inside the policy's window
        ("gFg", Policy(keep_last=2), {"d2": ("last 1/2",), "d0": ("last 2/2",)}, ["d1"]),
        ("FFg", Policy(keep_last=5), {"d2": ("last 1/5",)}, ["d1", "d0"]),
        # the newest not known bad is kept even by a policy that keeps nothing of it
        ("gF", Policy(), {"d1": (FAILED,), "d0": ("newest not failed",)}, []),
        (
            "gFF",
            Policy(keep_yearly=1),
            {"d2": (FAILED,), "d1": (FAILED,), "d0": ("yearly 1/1",)},
            [],
        ),
        # all failed: nothing to trade them for, none removed
        ("FFF", Policy(keep_last=1), {"d2": (FAILED,), "d1": (FAILED,), "d0": (FAILED,)}, []),
        # no failures: exactly as before
        ("ggg", Policy(keep_last=1), {"d2": ("last 1/1",)}, ["d1", "d0"]),
        ("ggg", Policy(), {"d2": ("newest",)}, ["d1", "d0"]),
    ],
)
def test_known_bad_backups_never_fill_a_keep_slot(
    marks: str, policy: Policy, kept: dict[str, tuple[str, ...]], removed: list[str]
) -> None:
    decision = apply_policy(days(marks), policy, UTC)
    assert {k.candidate.name: k.reasons for k in decision.keep} == kept
    assert [c.name for c in decision.remove] == removed


@pytest.mark.parametrize("marks", ["g", "F", "gF", "Fg", "FgF", "gFgF", "FFFF", "ggFgg"])
def test_the_newest_and_the_newest_good_always_stay(marks: str) -> None:
    for policy in (Policy(), Policy(keep_last=1), Policy(keep_daily=1), Policy(keep_monthly=9)):
        kept = {k.candidate.name for k in apply_policy(days(marks), policy, UTC).keep}
        assert f"d{len(marks) - 1}" in kept
        if "g" in marks:
            assert f"d{marks.rindex('g')}" in kept


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("manifest_domain", "times", "problem"),
    [
        ("web1", [NOW], None),
        ("web1", [NOW + timedelta(hours=23)], None),  # a clock a little ahead: fine
        ("db1", [NOW], "its manifest is of domain 'db1', not of 'web1'"),
        (
            "web1",
            [NOW, NOW + timedelta(days=1, seconds=1)],
            "its time 2026-03-02 12:00:01 UTC is in the future",
        ),
    ],
)
def test_placement_problem(
    manifest_domain: str, times: list[datetime], problem: str | None
) -> None:
    assert placement_problem("web1", manifest_domain, times, NOW) == problem
