"""core/empty_run: the line `all` prints when it selected no domain."""

from virtbackup.core.empty_run import nothing_to_back_up


def test_nothing_to_back_up_says_why() -> None:
    assert nothing_to_back_up(3, 2) is None
    assert nothing_to_back_up(0, 0) == "no domain to back up: this host has no domains"
    assert nothing_to_back_up(1, 0) == (
        "no domain to back up: the one domain of this host excluded by include/exclude "
        "(options or configuration)"
    )
    assert str(nothing_to_back_up(4, 0)).startswith("no domain to back up: all 4 domains of")
