"""core/metrics: the text format, read back by prometheus_client's own parser."""

from prometheus_text import parse_metrics

from virtbackup.core.metrics import (
    DomainMetrics,
    RepositoryMetrics,
    StoreMetrics,
    render_metrics,
)
from virtbackup.core.run_record import RESULTS, LastAttempt


def test_every_family_and_label_escaping() -> None:
    odd = 'we"b\\1\nx'
    failed = LastAttempt(odd, "failed", "gone", 5000.0, 2.5, 10, 4, None, 1000.0)
    text = render_metrics(
        [
            DomainMetrics(odd, failed, 900.0, 2),
            DomainMetrics("copied", None, 700.0, 1),  # backups, no record
        ],
        [StoreMetrics("/srv/b", "directory", 3, 12345)],
        [RepositoryMetrics("/srv/b", 40, 9000, 2, 160000, 5, 800, 1)],
    )
    got = parse_metrics(text)
    assert text.endswith("\n") and all(name.startswith("virtbackup_") for name in got)
    who = (("domain", odd),)
    assert got["virtbackup_domain_last_success_timestamp_seconds"] == {
        who: 1000.0,  # the record's, later than the newest backup's end
        (("domain", "copied"),): 700.0,
    }
    assert got["virtbackup_domain_last_attempt_timestamp_seconds"] == {who: 5000.0}
    assert got["virtbackup_domain_last_attempt_success"] == {who: 0.0}
    results = got["virtbackup_domain_last_attempt_result"]
    assert len(results) == len(RESULTS) and sum(results.values()) == 1
    assert results[(("domain", odd), ("result", "failed"))] == 1.0
    assert got["virtbackup_domain_last_attempt_duration_seconds"] == {who: 2.5}
    assert got["virtbackup_domain_last_attempt_read_bytes"] == {who: 10.0}
    assert got["virtbackup_domain_last_attempt_stored_bytes"] == {who: 4.0}
    assert got["virtbackup_domain_backups"][who] == 2.0
    store = (("dest", "/srv/b"), ("store", "directory"))
    assert got["virtbackup_store_backups"] == {store: 3.0}
    assert got["virtbackup_store_stored_bytes"] == {store: 12345.0}
    plain = (("dest", "/srv/b"), ("encrypted", "false"))
    sealed = (("dest", "/srv/b"), ("encrypted", "true"))
    assert got["virtbackup_repository_chunks"] == {plain: 40.0, sealed: 5.0}
    assert got["virtbackup_repository_stored_bytes"] == {plain: 9000.0, sealed: 800.0}
    assert got["virtbackup_repository_backups"] == {plain: 2.0, sealed: 1.0}
    assert got["virtbackup_repository_logical_bytes"] == {(("dest", "/srv/b"),): 160000.0}
