"""The remote store against real servers: uploads complete only with their manifest,
streamed backups checked before they count, retention and leftovers per host."""

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backup_helpers import MiB, disk_of, make_backup, manifest_at, most_random_frame
from harness.remotes import RemoteServer
from signing_helpers import make_signing_key

from virtbackup.adapters import rclone
from virtbackup.adapters.locks import domain_lock
from virtbackup.adapters.ssh_sign import sign
from virtbackup.core.backup_errors import RemoteError
from virtbackup.core.config import DomainSettings
from virtbackup.core.errors import UsageError
from virtbackup.core.model import DomainFacts, DomainState
from virtbackup.core.progress import NullProgress
from virtbackup.core.retention import Policy
from virtbackup.core.verify_record import VerifyRecord
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import back_up_disks
from virtbackup.engine.datapath.restore import restore_backup
from virtbackup.engine.datapath.verify import verify_backup
from virtbackup.engine.runs.all_domains import prune_offsite
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.remote import RemoteStore, ship
from virtbackup.engine.stores.retention import prune_domain
from virtbackup.engine.stores.store import stamp_time

UTC_ZONE = UTC


def store_on(remote: RemoteServer, host: str = "kvm1", only: bool = False) -> RemoteStore:
    return RemoteStore(remote.remote, host, only)


def prune_remote(
    store: RemoteStore,
    domain: str,
    policy: Policy,
    keep: set[str],
    allowed_signers: Path | None = None,
) -> list[str]:
    """Retention on the remote as `all` applies it: the policy, then the leftovers of
    interrupted uploads not in `keep`; the stamps removed."""
    result = prune_domain(store, domain, policy, UTC, allowed_signers=allowed_signers)
    return [*result.removed, *store.remove_leftovers(domain, keep)]


def fake_remote_backup(
    store: RemoteStore, domain: str, stamp: str, complete: bool, of: str | None = None
) -> None:
    """A remote backup of `domain` (its manifest says `of`, by default that domain) taken
    at the time of its stamp; `complete`: with its manifest."""
    path = store.backup_path(domain, stamp)
    rclone.write_text(store.remote, f"{path}/vda.raw.lz4", "data")
    if complete:
        manifest = manifest_at(of or domain, stamp)
        rclone.write_text(store.remote, f"{path}/manifest.json", manifest)


def test_host_names_are_checked() -> None:
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(UsageError, match="cannot name a directory"):
            RemoteStore(rclone.Remote("x:"), bad)
    assert stamp_time("20250125T183000Z-2") == datetime(2025, 1, 25, 18, 30, tzinfo=UTC)


def test_upload_is_complete_only_with_its_manifest(remote: RemoteServer, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(bytes(MiB) + b"data" * 1000)
    local = make_backup(tmp_path / "dest", [disk_of(image)]).path
    store = store_on(remote)
    # an earlier run died after sending the stream: not a backup yet
    rclone.copy_file(store.remote, local / "vda.raw.lz4", f"kvm1/web1/{local.name}/vda.raw.lz4")
    assert store.backups_of("web1").incomplete == [local.name]
    assert store.list_backups() == []

    location = store.upload(local)
    assert location == remote.remote.path("kvm1", "web1", local.name)
    assert store.backups_of("web1").complete == [local.name]
    (listed,) = store.list_backups("web1")
    assert (listed.stamp, listed.path, listed.problem) == (local.name, location, None)
    assert listed.size == sum(p.stat().st_size for p in local.iterdir())
    assert listed.verified is None
    assert verify_backup(store.files("web1", local.name), NullProgress()).ok
    (listed,) = store.list_backups("web1")
    assert listed.verified is not None and listed.verified.ok
    assert listed.size == sum(p.stat().st_size for p in local.iterdir())  # the record is not data

    # the remote copy damaged: verify says so there, and the local copy is not involved
    stream = f"kvm1/web1/{local.name}/vda.raw.lz4"
    damaged = tmp_path / "damaged.lz4"
    data = bytearray((local / "vda.raw.lz4").read_bytes())
    frame = most_random_frame(local / "vda.raw.lz4")
    data[frame.stored_offset + frame.stored_length // 2] ^= 0x40
    damaged.write_bytes(data)
    rclone.delete_file(store.remote, stream)  # (a copy of the same size may be skipped)
    rclone.copy_file(store.remote, damaged, stream)
    outcome = verify_backup(store.files("web1", local.name), NullProgress())
    assert not outcome.ok and outcome.recorded
    (listed,) = store.list_backups("web1")
    assert listed.verified is not None and not listed.verified.ok
    assert listed.verified.problem == outcome.problem
    assert verify_backup(local, NullProgress()).ok


def test_streamed_backup_round_trip_and_abort(remote: RemoteServer, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    with open(image, "wb") as f:
        f.truncate(12 * MiB)
        f.write(b"payload" * 100_000)
    store = store_on(remote, only=True)
    result = back_up_disks(
        store,
        "web1",
        "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
        "<domain/>",
        "offline",
        [disk_of(image)],
        NullProgress(),
        WriterOptions(chunk_size=4 * MiB),
    )
    stamp = str(result.path).rsplit("/", 1)[1]
    assert store.backups_of("web1").complete == [stamp]
    restore_backup(store.files("web1", stamp), tmp_path / "out", NullProgress())
    assert (tmp_path / "out" / "vda.raw").read_bytes() == image.read_bytes()

    with (
        pytest.raises(RuntimeError, match="boom"),
        store.begin("web1", datetime.now(UTC)) as partial,
    ):
        with partial.create("vda.raw.lz4") as sink:
            sink.write(b"half a stream")
        raise RuntimeError("boom")
    assert store.backups_of("web1").incomplete == []  # the aborted one is gone


def test_remote_retention_waits_while_the_domain_is_in_use(
    sftp_remote: RemoteServer, tmp_path: Path
) -> None:
    """A `backup web1` run by hand uploads under the domain's lock; `all` must not take
    its files for a leftover meanwhile."""
    remote = store_on(sftp_remote, "kvm1")
    fake_remote_backup(remote, "web1", "20250101T010000Z", complete=True)
    fake_remote_backup(remote, "web1", "20250102T010000Z", complete=False)  # uploading
    facts = DomainFacts("web1", "8c3f0a52-0000-4000-8000-000000000001", DomainState.SHUTOFF, True)
    settings = DomainSettings(retention=Policy(keep_last=1))
    local, state = LocalStore(tmp_path), tmp_path / "state"

    held = domain_lock(state, facts.uuid, facts.name)
    held.acquire()
    assert prune_offsite(remote, facts, settings, UTC, local, state) == ()
    assert remote.backups_of("web1").incomplete == ["20250102T010000Z"]
    held.release()
    assert prune_offsite(remote, facts, settings, UTC, local, state) == ("20250102T010000Z",)
    assert remote.backups_of("web1").incomplete == []
    assert remote.backups_of("web1").complete == ["20250101T010000Z"]
    assert domain_lock(state, facts.uuid, facts.name).try_acquire()  # released again


def test_retention_keeps_the_newest_and_only_touches_its_host(
    sftp_remote: RemoteServer,
) -> None:
    mine, theirs = store_on(sftp_remote, "kvm1"), store_on(sftp_remote, "kvm2")
    for stamp in ("20250101T010000Z", "20250102T010000Z", "20250103T010000Z"):
        fake_remote_backup(mine, "web1", stamp, complete=True)
        fake_remote_backup(theirs, "web1", stamp, complete=True)
    fake_remote_backup(mine, "web1", "20241231T010000Z", complete=False)  # leftover
    fake_remote_backup(mine, "web1", "20250104T010000Z", complete=False)  # still to upload

    removed = prune_remote(mine, "web1", Policy(), keep={"20250104T010000Z"})
    assert removed == ["20241231T010000Z"]  # no policy: only the leftover goes
    removed = prune_remote(mine, "web1", Policy(keep_daily=2), keep={"20250104T010000Z"})
    assert removed == ["20250101T010000Z"]
    removed = prune_remote(mine, "web1", Policy(keep_last=1), keep=set())
    assert sorted(removed) == ["20250102T010000Z", "20250104T010000Z"]
    assert mine.backups_of("web1").complete == ["20250103T010000Z"]  # the newest stays
    assert theirs.backups_of("web1").complete == [
        "20250103T010000Z",
        "20250102T010000Z",
        "20250101T010000Z",
    ]
    with pytest.raises(RemoteError):
        rclone.read_text(mine.remote, "kvm1/web1/20250101T010000Z/manifest.json")


def test_remote_retention_counts_only_signed_backups_of_the_domain_from_the_past(
    sftp_remote: RemoteServer, tmp_path: Path
) -> None:
    """As locally: a remote backup whose manifest names another domain, or from the far
    future, is listed with that problem and left alone; with allowed_signers, an
    unsigned one never fills a keep slot."""
    mine = store_on(sftp_remote)
    key = make_signing_key(tmp_path / "keys")
    genuine, older, newer = "20250102T010000Z", "20250101T010000Z", "20250103T010000Z"
    for stamp in (genuine, older, newer):
        fake_remote_backup(mine, "web1", stamp, complete=True)
    for name in ("manifest.json", "domain.xml"):  # the genuine one: signed, as backup signs
        path = f"{mine.backup_path('web1', genuine)}/{name}"
        if name == "domain.xml":
            rclone.write_text(mine.remote, path, "<domain/>")
        data = rclone.read_text(mine.remote, path).encode()
        rclone.write_text(mine.remote, f"{path}.sig", sign(key.key, data).decode())
    fake_remote_backup(mine, "web1", "20250104T010000Z", complete=True, of="db1")
    fake_remote_backup(mine, "web1", "20991231T000000Z", complete=True)

    policy = Policy(keep_last=1)
    result = prune_domain(
        mine, "web1", policy, UTC, dry_run=True, allowed_signers=key.allowed_signers
    )
    assert [(k.candidate.name, k.reasons) for k in result.decision.keep] == [
        (newer, ("unsigned, no newer good backup",)),
        (genuine, ("last 1/1",)),
    ]
    assert [c.name for c in result.decision.remove] == [older]
    assert result.problems == {
        "20991231T000000Z": "its time 2099-12-31 00:00:00 UTC is in the future",
        "20250104T010000Z": "its manifest is of domain 'db1', not of 'web1'",
    }
    listed = {b.stamp: b.problem for b in mine.list_backups("web1")}
    assert listed["20250104T010000Z"] == result.problems["20250104T010000Z"]
    assert listed["20991231T000000Z"] == result.problems["20991231T000000Z"]
    removed = prune_remote(mine, "web1", policy, set(), key.allowed_signers)
    assert removed == [older]
    assert mine.backups_of("web1").complete == [
        "20991231T000000Z",
        "20250104T010000Z",
        newer,
        genuine,
    ]


def test_a_backup_of_another_domain_is_not_shipped_as_this_ones(
    sftp_remote: RemoteServer, tmp_path: Path
) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(b"data" * 1000)
    dest = tmp_path / "dest"
    web1 = make_backup(dest, [disk_of(image)], domain="web1").path
    (dest / "db1").mkdir()
    shutil.copytree(web1, dest / "db1" / web1.name)  # web1's backup, planted as db1's
    mine = store_on(sftp_remote)
    store = LocalStore(dest)
    assert ship(mine, store, "db1", tmp_path / "state") == []
    assert mine.backups_of("db1").complete == []
    assert ship(mine, store, "web1", tmp_path / "state") == [
        mine.remote.path(f"kvm1/web1/{web1.name}")
    ]


def test_remote_retention_never_trades_a_good_backup_for_a_failed_one(
    remote: RemoteServer,
) -> None:
    """`verify --remote` found the newest remote copy damaged: --keep-last 1 keeps the
    good one before it (and the damaged one, the newest), removes the older."""
    mine = store_on(remote)
    stamps = ["20250101T010000Z", "20250102T010000Z", "20250103T010000Z"]
    for stamp in stamps:
        fake_remote_backup(mine, "web1", stamp, complete=True)
    when = datetime(2025, 1, 4, tzinfo=UTC)
    mine.files("web1", stamps[2]).record_verification(VerifyRecord(when, False, "damaged", "t"))
    mine.files("web1", stamps[1]).record_verification(VerifyRecord(when, True, None, "t"))

    result = prune_domain(mine, "web1", Policy(keep_last=1), UTC, dry_run=True)
    assert [(k.candidate.name, k.reasons) for k in result.decision.keep] == [
        (stamps[2], ("failed verification, no newer good backup",)),
        (stamps[1], ("last 1/1",)),
    ]
    assert prune_remote(mine, "web1", Policy(keep_last=1), keep=set()) == [stamps[0]]
    assert mine.backups_of("web1").complete == stamps[:0:-1]
    # manifests that cannot be read: listed with their problem, not an error
    for stamp in stamps[1:]:
        rclone.write_text(mine.remote, f"{mine.backup_path('web1', stamp)}/manifest.json", "{}")
    listed = mine.list_backups("web1")
    assert [b.stamp for b in listed] == stamps[:0:-1]
    assert all("manifest.json is corrupt" in (b.problem or "") for b in listed)
