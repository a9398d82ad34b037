"""core/run_record: the per-domain record of the last attempt, and what it carries over."""

import json

import pytest

from virtbackup.core.run_record import (
    RESULTS,
    LastAttempt,
    RecordFormatError,
    build_record,
    next_attempt,
    parse_record,
)
from virtbackup.engine.runs.domain_backup import Result

OK = LastAttempt("web1", "ok", "consistent", 2000.0, 3.5, 100, 40, "/d/web1/S", None)


def test_results_are_the_engines() -> None:
    assert set(RESULTS) == {r.value for r in Result}


def test_round_trip_and_last_success_carried_over() -> None:
    first = next_attempt(None, OK)
    assert first.last_success == 2000.0
    assert parse_record(build_record(first), "web1") == first
    failed = LastAttempt("web1", "failed", "disk gone", 3000.0, 1.0, 0, 0, None, None)
    second = next_attempt(first, failed)
    assert (second.failed, second.last_success) == (True, 2000.0)
    assert next_attempt(None, failed).last_success is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"version": 2}, "version 1"),
        ({"domain": "db"}, "not the record of 'web1'"),
        ({"result": "great"}, "result is unknown"),
        ({"finished": "yesterday"}, "'finished' is not a number"),
        ({"finished": 1e300}, "not a Unix time"),
        ({"seconds": 10**400}, "'seconds' is not a number"),
        ({"seconds": float("inf")}, "'seconds' is not a number"),
        ({"last_success": 10**400}, "'last_success' is not a number"),
        ({"read": -1}, "'read' is negative"),
        ({"stored": True}, "'stored' is not of type int"),
        ({"backup": 5}, "'backup' is not of type str"),
    ],
)
def test_a_bad_record_is_refused(change: dict[str, object], problem: str) -> None:
    document = {**json.loads(build_record(OK)), **change}
    with pytest.raises(RecordFormatError, match=problem):
        parse_record(json.dumps(document), "web1")


def test_not_json() -> None:
    with pytest.raises(RecordFormatError, match="not JSON"):
        parse_record("{", "web1")
