"""Journal records and the pure decisions of how to undo them."""

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtbackup.core.lvm import RUN_JOURNAL_UUID, MountRecord
from virtbackup.core.model import DomainState
from virtbackup.core.undo import (
    BackupJobRecord,
    DiskObservation,
    Entry,
    FrozenRecord,
    InstantPullRecord,
    Journal,
    JournalError,
    NbdServerRecord,
    OverlayPlan,
    OverlayRecord,
    OverlayStep,
    StateRecord,
    StateStep,
    foreign_journal,
    instant_socket_dir,
    journal_from_dict,
    journal_to_dict,
    plan_overlay_undo,
    plan_state_undo,
    record_from_dict,
    record_to_dict,
)

OVL = OverlayRecord(
    target="vda",
    original="/img/web.qcow2",
    original_type="file",
    original_format="qcow2",
    overlay="/img/web.qcow2.virtbackup-R.qcow2",
)
JOURNAL = Journal(
    run_id="20240102T030405Z-abcdef",
    pid=42,
    created="2024-01-02T03:04:05Z",
    uri="qemu:///system",
    domain_uuid="u-u-i-d",
    domain_name="web",
    entries=(
        Entry(1, StateRecord(DomainState.RUNNING, restart=False)),
        Entry(2, OVL),
        Entry(3, FrozenRecord()),
    ),
)


def test_journal_round_trips_through_plain_data() -> None:
    data = journal_to_dict(JOURNAL)
    assert data["records"][1] == {"id": 2, **record_to_dict(OVL)}
    assert data["records"][0] == {"id": 1, "kind": "state", "was": "running", "restart": False}
    assert journal_from_dict(data) == JOURNAL


def test_undo_order_is_newest_first_and_ids_grow() -> None:
    assert [e.id for e in JOURNAL.undo_order()] == [3, 2, 1]
    grown, new_id = JOURNAL.remove(3).add(FrozenRecord())
    assert new_id == 3 and grown.entries[-1] == Entry(3, FrozenRecord())
    assert [e.id for e in JOURNAL.remove(2).entries] == [1, 3]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"kind": "tape"}, "unknown record kind 'tape'"),
        ({"kind": "overlay", "target": "vda"}, "'original' missing"),
        ({"kind": "state", "was": "running", "restart": "yes"}, "true or false"),
        ({"kind": "state", "was": "dancing", "restart": True}, "bad state record"),
        ({"kind": "backup-job", "socket": "/s", "scratch": "/x"}, "list of paths"),
        ({"kind": "backup-job", "socket": "/s", "scratch": [""]}, "list of paths"),
        ({"kind": "backup-job", "scratch": []}, "'socket' missing"),
    ],
)
def test_bad_records_are_refused(data: dict[str, object], error: str) -> None:
    with pytest.raises(JournalError, match=error):
        record_from_dict(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ([], "not a virtbackup journal"),
        ({"format": "virtbackup-journal", "version": 9}, "version 9"),
        ({**journal_to_dict(JOURNAL), "domain": None}, "without domain"),
        ({**journal_to_dict(JOURNAL), "records": [{"kind": "frozen"}]}, "without an id"),
    ],
)
def test_bad_journals_are_refused(data: object, error: str) -> None:
    with pytest.raises(JournalError, match=error):
        journal_from_dict(data)


D = OverlayStep.DELETE


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        # Killed after the snapshot: merge back, libvirt fixes the definition, delete.
        (
            DiskObservation(True, True, OVL.overlay, False, OVL.overlay, True),
            OverlayPlan((OverlayStep.COMMIT_PIVOT, OverlayStep.REDEFINE, D)),
        ),
        # Killed while the merge job ran: it goes on in libvirtd; wait for it and pivot.
        (
            DiskObservation(True, True, OVL.overlay, True, OVL.original, True),
            OverlayPlan((OverlayStep.FINISH_JOB, D)),
        ),
        # Killed after the pivot: only the file is left.
        (DiskObservation(True, True, OVL.original, False, OVL.original, True), OverlayPlan((D,))),
        # Killed before the snapshot was made: nothing to do.
        (DiskObservation(True, True, OVL.original, False, OVL.original, False), OverlayPlan()),
        # The domain was shut off on the overlay: merge offline and redefine.
        (
            DiskObservation(True, False, None, False, OVL.overlay, True),
            OverlayPlan((OverlayStep.COMMIT_OFFLINE, OverlayStep.REDEFINE, D)),
        ),
        (DiskObservation(True, False, None, False, OVL.original, True), OverlayPlan((D,))),
        # A transient domain that is gone, its overlay gone too.
        (DiskObservation(False, overlay_exists=False), OverlayPlan()),
    ],
)
def test_overlay_undo_plans(seen: DiskObservation, expected: OverlayPlan) -> None:
    assert plan_overlay_undo(OVL, seen) == expected


@pytest.mark.parametrize(
    ("seen", "problem"),
    [
        (DiskObservation(False, overlay_exists=True), "the domain is gone; overlay"),
        (DiskObservation(True, True, "/img/other.qcow2", False, None, True), "neither"),
        (DiskObservation(True, False, None, False, "/img/other.qcow2", True), "neither"),
        (DiskObservation(True, True, OVL.original, True, OVL.original, True), "block job"),
        (DiskObservation(True, False, None, False, OVL.overlay, False), "which is missing"),
    ],
)
def test_overlay_undo_refuses_what_is_not_safe(seen: DiskObservation, problem: str) -> None:
    plan = plan_overlay_undo(OVL, seen)
    assert plan.steps == ()
    assert plan.problem is not None and problem in plan.problem


R, P, S = DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTOFF


@pytest.mark.parametrize(
    ("was", "restart", "now", "step"),
    [
        (R, False, R, None),
        (R, False, P, StateStep.RESUME),  # qemu paused it on an I/O error
        (R, False, S, None),  # the guest powered itself off: not ours to start
        (R, True, S, StateStep.START),  # we shut it down
        (R, True, R, None),
        (P, False, P, None),
        (P, False, R, None),  # someone resumed it: not ours to pause
        (P, True, S, StateStep.START_PAUSED),
        (S, False, R, None),
        (R, True, None, None),  # gone
    ],
)
def test_state_undo(
    was: DomainState, restart: bool, now: DomainState | None, step: StateStep | None
) -> None:
    assert plan_state_undo(StateRecord(was, restart), now) == step


# -- is a journal ours? ---------------------------------------------------------------------

RUN = "20240102T030405Z-abcdef"
OURS = Journal(RUN, 1, "", "qemu:///system", "0f1e2d3c-aaaa-bbbb-cccc-000000000001", "web")


def overlay_journal(original: str, overlay: str, target: str = "vda") -> Journal:
    record = OverlayRecord(target, original, "file", "qcow2", overlay)
    return replace(OURS, entries=(Entry(1, record),))


@pytest.mark.parametrize(
    ("original", "overlay", "target"),
    [
        ("/img/web.qcow2", f"/img/web.qcow2.virtbackup-{RUN}.qcow2", "vda"),
        ("/dev/vg/web", f"/ovl/{OURS.domain_uuid}-sda.virtbackup-{RUN}.qcow2", "sda"),
    ],
)
def test_overlays_named_and_placed_as_ours_are_ours(
    original: str, overlay: str, target: str
) -> None:
    journal = overlay_journal(original, overlay, target)
    assert foreign_journal(journal, f"{OURS.domain_uuid}.{RUN}.json") is None


@pytest.mark.parametrize(
    ("original", "overlay", "target"),
    [
        ("/img/web.qcow2", "/etc/passwd", "vda"),
        ("/img/web.qcow2", f"/img/other.qcow2.virtbackup-{RUN}.qcow2", "vda"),
        ("/img/web.qcow2", "/img/web.qcow2.virtbackup-20990101T000000Z-abcdef.qcow2", "vda"),
        ("/img/../etc/web", f"/img/../etc/web.virtbackup-{RUN}.qcow2", "vda"),
        ("img/web.qcow2", f"img/web.qcow2.virtbackup-{RUN}.qcow2", "vda"),
        ("/img/web.qcow2", f"/ovl/{OURS.domain_uuid}-vdb.virtbackup-{RUN}.qcow2", "vda"),
        ("/img/web.qcow2", f"/ovl/{OURS.domain_uuid}-../x.virtbackup-{RUN}.qcow2", "../x"),
    ],
)
def test_overlays_of_another_name_or_place_are_foreign(
    original: str, overlay: str, target: str
) -> None:
    journal = overlay_journal(original, overlay, target)
    assert "is not named and placed" in str(
        foreign_journal(journal, f"{OURS.domain_uuid}.{RUN}.json")
    )


def test_a_journal_whose_name_or_run_id_is_not_ours_is_foreign() -> None:
    assert foreign_journal(OURS, f"{OURS.domain_uuid}.{RUN}.json") is None
    assert foreign_journal(OURS, f"other.{RUN}.json") is not None
    assert foreign_journal(replace(OURS, run_id="R"), f"{OURS.domain_uuid}.R.json") is not None
    mount = replace(OURS, entries=(Entry(1, MountRecord(target="/home", source="/dev/x")),))
    assert "mount folder" in str(foreign_journal(mount, f"{OURS.domain_uuid}.{RUN}.json"))


# -- the parser never trusts what it reads ----------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
FIELDS = ("format", "version", "run_id", "pid", "created", "uri", "domain", "records")
RECORD_FIELDS = ("id", "kind", "target", "original", "original_type", "original_format")


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(FIELDS),
    record_field=st.sampled_from(RECORD_FIELDS + ("overlay", "was", "restart", "name", "vg")),
    value=JSON,
    kind=st.sampled_from(["overlay", "state", "frozen", "lvm-snapshot", "mount", "other"]),
)
def test_a_damaged_journal_is_a_journal_error_never_a_crash(
    field: str, record_field: str, value: Any, kind: str
) -> None:
    document = journal_to_dict(JOURNAL)
    record = {"id": 9, **record_to_dict(OVL), "kind": kind}
    record[record_field] = value
    document["records"].append(record)
    for damaged in ({**document, field: value}, document, value):
        try:
            journal_from_dict(damaged)
        except JournalError:
            pass


def test_the_lvm_methods_run_journal_is_ours() -> None:
    """The LVM method journals a run's snapshots under a pseudo domain, not a uuid."""
    mount = MountRecord(target="/run/virtbackup/lvm/vbsnap-abc", source="/dev/vbvg/vbsnap-abc")
    run_wide = replace(OURS, domain_uuid=RUN_JOURNAL_UUID, entries=(Entry(1, mount),))
    assert foreign_journal(run_wide, f"{RUN_JOURNAL_UUID}.{RUN}.json") is None
    assert foreign_journal(replace(run_wide, domain_uuid="lvm-other"), f"lvm-other.{RUN}.json")


SOCKET = f"/var/lib/libvirt/qemu/{OURS.domain_uuid}.virtbackup-{RUN}.sock"


def job_journal(socket: str, *scratch: str) -> Journal:
    return replace(OURS, entries=(Entry(1, BackupJobRecord(socket, scratch)),))


def test_a_backup_job_record_round_trips_and_is_ours_when_named_as_ours() -> None:
    journal = job_journal(SOCKET, f"/img/web.qcow2.virtbackup-{RUN}.scratch")
    assert journal_from_dict(journal_to_dict(journal)) == journal
    assert foreign_journal(journal, f"{OURS.domain_uuid}.{RUN}.json") is None


@pytest.mark.parametrize(
    ("socket", "scratch", "problem"),
    [
        ("/tmp/x.sock", f"/img/web.qcow2.virtbackup-{RUN}.scratch", "socket '/tmp/x.sock'"),
        (SOCKET, "/etc/passwd", "scratch file '/etc/passwd'"),
        (SOCKET, f"/img/../etc/x.virtbackup-{RUN}.scratch", "scratch file"),
        (SOCKET, "/img/web.qcow2.virtbackup-20990101T000000Z-abcdef.scratch", "scratch file"),
    ],
)
def test_a_backup_job_record_naming_other_files_is_foreign(
    socket: str, scratch: str, problem: str
) -> None:
    found = foreign_journal(job_journal(socket, scratch), f"{OURS.domain_uuid}.{RUN}.json")
    assert problem in str(found)


NBD_SOCKET = f"/var/lib/libvirt/qemu/{OURS.domain_uuid}-vda.virtbackup-{RUN}.sock"


@pytest.mark.parametrize(
    ("socket", "ours"),
    [
        (NBD_SOCKET, True),
        (f"/tmp/{OURS.domain_uuid}-vda.virtbackup-{RUN}.sock", False),
        (f"/var/lib/libvirt/qemu/other-vda.virtbackup-{RUN}.sock", False),
        (NBD_SOCKET.replace(RUN, "20990101T000000Z-abcdef"), False),
        (f"/var/lib/libvirt/qemu/{OURS.domain_uuid}-../x.virtbackup-{RUN}.sock", False),
    ],
)
def test_a_qemu_nbd_record_round_trips_and_is_ours_only_on_our_socket(
    socket: str, ours: bool
) -> None:
    journal = replace(OURS, entries=(Entry(1, NbdServerRecord(socket)),))
    assert journal_from_dict(journal_to_dict(journal)) == journal
    found = foreign_journal(journal, f"{OURS.domain_uuid}.{RUN}.json")
    assert (found is None) == ours, found


INSTANT = InstantPullRecord(
    target="vda",
    overlay="/restore/vda.qcow2",
    socket=f"{instant_socket_dir(OURS.domain_uuid)}/vda.sock",
    backup="/backups/web1/20240102T030405Z",
)


@pytest.mark.parametrize(
    ("record", "ours"),
    [
        (INSTANT, True),
        (replace(INSTANT, identity="/root/key.txt"), True),
        (replace(INSTANT, socket="/tmp/vda.sock"), False),
        (replace(INSTANT, socket=f"{instant_socket_dir('other')}/vda.sock"), False),
        (replace(INSTANT, overlay="/restore/../etc/x.qcow2"), False),
        (replace(INSTANT, backup="relative/backup"), False),
    ],
)
def test_an_instant_restore_record_round_trips_and_is_ours_only_on_our_paths(
    record: InstantPullRecord, ours: bool
) -> None:
    journal = replace(OURS, entries=(Entry(1, record),))
    assert journal_from_dict(journal_to_dict(journal)) == journal
    found = foreign_journal(journal, f"{OURS.domain_uuid}.{RUN}.json")
    assert (found is None) == ours, found
