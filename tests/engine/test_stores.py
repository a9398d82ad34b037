"""What every store promises, held against each one: the local directory and an rclone
remote (SFTP). A backup appears whole on commit or not at all, stamps of one second do
not collide, removal takes a backup whole, and retention counts by the same time."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backup_helpers import manifest_at
from harness.remotes import RemoteServer

from virtbackup.core.errors import UsageError
from virtbackup.core.retention import Policy
from virtbackup.core.verify_record import VerifyRecord
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.remote import RemoteStore
from virtbackup.engine.stores.retention import prune_domain
from virtbackup.engine.stores.store import MANIFEST, Store

JAN_2 = datetime(2025, 1, 2, 1, tzinfo=UTC)


@pytest.fixture(params=["local", "remote"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        (tmp_path / "dest").mkdir(mode=0o700)
        yield LocalStore(tmp_path / "dest")
    else:
        server: RemoteServer = request.getfixturevalue("sftp_remote")
        yield RemoteStore(server.remote, "kvm1")


def write_backup(store: Store, now: datetime, started: str) -> str:
    """A backup of web1 begun at `now` whose manifest says it started at the time of the
    stamp `started`; where it is."""
    with store.begin("web1", now) as partial:
        partial.write_bytes("vda.raw.lz4", b"data")
        partial.write_text(MANIFEST, manifest_at("web1", started))
        return str(partial.commit())


def test_a_backup_appears_whole_on_commit_and_goes_whole(store: Store) -> None:
    with store.begin("web1", JAN_2) as partial:
        partial.write_bytes("vda.raw.lz4", b"data")
        partial.write_text(MANIFEST, manifest_at("web1", "20250102T010000Z"))
        assert partial.size_of("vda.raw.lz4") == 4
        assert store.list_backups("web1") == []  # not before commit
        where = partial.commit()
    (listed,) = store.list_backups("web1")
    assert (listed.stamp, listed.path, listed.problem) == ("20250102T010000Z", where, None)
    assert listed.manifest is not None and listed.manifest.domain_name == "web1"
    files = store.files("web1", listed.stamp)
    assert files.read(MANIFEST).decode() == manifest_at("web1", "20250102T010000Z")
    assert files.size("vda.raw.lz4") == 4
    assert listed.verified is None

    # the verification record is listed with the backup, not counted in its size
    files.record_verification(VerifyRecord(JAN_2, False, "damaged", "t"))
    (again,) = store.list_backups("web1")
    assert again.verified == VerifyRecord(JAN_2, False, "damaged", "t")
    assert again.size == listed.size

    # a second backup in the same second gets the next stamp
    write_backup(store, JAN_2, "20250102T010000Z")
    assert [b.stamp for b in store.list_backups("web1")] == [
        "20250102T010000Z-2",
        "20250102T010000Z",
    ]
    store.remove("web1", "20250102T010000Z")
    assert [b.stamp for b in store.list_backups("web1")] == ["20250102T010000Z-2"]


def test_an_aborted_backup_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.begin("web1", JAN_2) as partial:
        with partial.create("vda.raw.lz4") as sink:
            sink.write(b"half a stream")
        raise RuntimeError("boom")
    assert store.list_backups("web1") == []
    assert write_backup(store, JAN_2, "20250102T010000Z").endswith("/20250102T010000Z")


def test_retention_counts_by_the_start_in_the_manifest(store: Store) -> None:
    """A backup whose stamp is newer than the start its manifest records (renamed or
    copied in by hand) counts as old as its data: the one started last is kept."""
    write_backup(store, JAN_2, "20250102T010000Z")
    write_backup(store, datetime(2025, 1, 3, 1, tzinfo=UTC), "20250101T010000Z")
    result = prune_domain(store, "web1", Policy(keep_last=1), UTC)
    assert [k.candidate.name for k in result.decision.keep] == ["20250102T010000Z"]
    assert result.removed == ("20250103T010000Z",)
    assert [b.stamp for b in store.list_backups("web1")] == ["20250102T010000Z"]

    # an empty policy keeps every backup
    write_backup(store, datetime(2025, 1, 3, 1, tzinfo=UTC), "20250103T010000Z")
    assert prune_domain(store, "web1", Policy(), UTC).removed == ()
    assert len(store.list_backups("web1")) == 2


@pytest.mark.parametrize(
    ("domain", "stamp"), [("web1", ".."), ("web1", "x/../.."), ("..", "20250102T010000Z")]
)
def test_names_outside_the_store_are_refused(store: Store, domain: str, stamp: str) -> None:
    write_backup(store, JAN_2, "20250102T010000Z")
    with pytest.raises(UsageError):
        store.remove(domain, stamp)
    with pytest.raises(UsageError):
        store.files(domain, stamp)
    assert [b.stamp for b in store.list_backups("web1")] == ["20250102T010000Z"]
