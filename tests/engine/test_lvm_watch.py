"""The overflow watch and the guarded progress sink, with `lvs` replaced."""

import pytest

from virtbackup.adapters import lvm
from virtbackup.core.lvm import LogicalVolume, SnapshotOverflow
from virtbackup.core.progress import NullProgress, RecordingSteps
from virtbackup.engine.methods.lvm_snapshots import GuardedProgress, OverflowWatch, Snapshot

MiB = 1 << 20


def volume(name: str, attr: str, percent: float | None) -> LogicalVolume:
    return LogicalVolume(
        name, "vg", f"/dev/vg/{name}", "", 8 * MiB, attr, "vms", percent, 0, 4 * MiB, (254, 5)
    )


ORIGIN = volume("vms", "owi-aos---", None)
INVALID = volume("vbsnap-vms-r", "swi-I-s---", 100.0)
SNAP = Snapshot(ORIGIN, volume("vbsnap-vms-r", "swi-aos---", 1.0), 8 * MiB, frozenset())


def watch_seeing(monkeypatch: pytest.MonkeyPatch, *states: LogicalVolume | None) -> OverflowWatch:
    answers = list(states)

    def list_lvs(*names: str) -> list[LogicalVolume]:
        state = answers.pop(0) if len(answers) > 1 else answers[0]
        return [state] if state is not None else []

    monkeypatch.setattr(lvm, "list_lvs", list_lvs)
    return OverflowWatch([SNAP], RecordingSteps(), "web1", interval=3600)


def test_a_healthy_snapshot_passes_and_a_full_one_warns_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = watch_seeing(monkeypatch, volume("vbsnap-vms-r", "swi-aos---", 85.0))
    watch.check()
    assert isinstance(watch.steps, RecordingSteps)
    assert watch.steps.warnings == [("web1", "LVM snapshot vg/vbsnap-vms-r is 85 % full")]


@pytest.mark.parametrize(
    "state",
    [
        volume("vbsnap-vms-r", "swi-I-s---", 100.0),
        volume("vbsnap-vms-r", "swi-aos---", 100.0),
        None,
    ],
)
def test_an_invalid_full_or_vanished_snapshot_fails(
    monkeypatch: pytest.MonkeyPatch, state: LogicalVolume | None
) -> None:
    watch = watch_seeing(monkeypatch, state)
    with pytest.raises(SnapshotOverflow) as caught:
        watch.check()
    message = str(caught.value)
    assert message.startswith("LVM snapshot vg/vbsnap-vms-r of vg/vms (8.0 MiB) ")
    assert "this backup of web1 is unusable and was not kept" in message
    assert "--snapshot-size" in message


def test_the_guard_stops_the_stream_and_checks_before_the_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = watch_seeing(monkeypatch, INVALID)
    guard = GuardedProgress(NullProgress(), watch)
    guard.on_start(100, "vda")
    guard.on_advance(50)  # the watch thread has not looked yet
    with pytest.raises(SnapshotOverflow):
        guard.on_done()  # looks itself when the disk's stream ends: invalid
    with pytest.raises(SnapshotOverflow):
        guard.on_advance(50)  # and from then on every step stops the stream
