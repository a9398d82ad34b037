"""The session's undo stack, its journal and its signal handling, without libvirt."""

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from virtbackup.adapters.journal import list_journals, load_journal
from virtbackup.core.consistency_errors import UndoIncomplete
from virtbackup.core.errors import Interrupted, LockHeld
from virtbackup.core.model import DomainState
from virtbackup.core.progress import RecordingSteps
from virtbackup.core.undo import FrozenRecord, StateRecord
from virtbackup.engine.runs.session import Session, new_run_id

STATE = StateRecord(DomainState.RUNNING, restart=True)


def session(state_dir: Path, **kwargs: object) -> Session:
    return Session(
        state_dir,
        SimpleNamespace(uri="qemu:///system"),  # the undos here are given; none calls libvirt
        "UU",
        "web",
        finish_leftovers=False,
        **kwargs,  # type: ignore[arg-type]
    )


def records_on_disk(state_dir: Path) -> list[str]:
    return [e.record.kind for p in list_journals(state_dir) for e in load_journal(p).entries]


def test_changes_are_journalled_first_and_undone_newest_first(tmp_path: Path) -> None:
    done: list[str] = []
    with session(tmp_path) as s:
        s.register(STATE, undo=lambda: done.append("state"))
        seen = s.change(
            FrozenRecord(), do=lambda: records_on_disk(tmp_path), undo=lambda: done.append("thaw")
        )
        assert seen == ["state", "frozen"]  # on disk before the change was made
        assert s.journal_path is not None and s.journal_path.exists()
    assert done == ["thaw", "state"]
    assert list_journals(tmp_path) == []
    with session(tmp_path):  # the lock was released
        pass


def test_a_scope_undoes_its_own_changes_on_leaving(tmp_path: Path) -> None:
    done: list[str] = []
    with session(tmp_path) as s:
        s.register(STATE, undo=lambda: done.append("outer"))
        with s.scope():
            s.register(FrozenRecord(), undo=lambda: done.append("inner"))
        assert done == ["inner"]
        assert records_on_disk(tmp_path) == ["state"]
    assert done == ["inner", "outer"]


def test_a_failing_change_is_still_undone(tmp_path: Path) -> None:
    done: list[str] = []

    def fail() -> None:
        raise RuntimeError("half-made")

    with pytest.raises(RuntimeError, match="half-made"):
        with session(tmp_path) as s:
            s.change(FrozenRecord(), do=fail, undo=lambda: done.append("thaw"))
    assert done == ["thaw"]
    assert list_journals(tmp_path) == []


def test_an_undo_that_fails_keeps_its_record_for_clean(tmp_path: Path) -> None:
    done: list[str] = []
    steps = RecordingSteps()

    def broken() -> None:
        raise OSError("libvirtd went away")

    with pytest.raises(UndoIncomplete, match="libvirtd went away") as caught:
        with session(tmp_path, steps=steps) as s:
            s.register(STATE, undo=lambda: done.append("state"))
            s.register(FrozenRecord(), undo=broken)
    assert done == ["state"]  # the others still ran
    assert "virtbackup clean" in str(caught.value)
    assert records_on_disk(tmp_path) == ["frozen"]
    assert steps.warnings and "cannot undo" in steps.warnings[0][1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_unwinds_the_session(tmp_path: Path, signum: int) -> None:
    previous = signal.getsignal(signum)
    done: list[str] = []
    with pytest.raises(Interrupted, match=signal.Signals(signum).name):
        with session(tmp_path) as s:
            s.register(STATE, undo=lambda: done.append("state"))
            os.kill(os.getpid(), signum)
            pytest.fail("the signal must interrupt")
    assert done == ["state"]
    assert list_journals(tmp_path) == []
    assert signal.getsignal(signum) == previous


def test_signals_wait_while_undos_run_then_interrupt(tmp_path: Path) -> None:
    done: list[str] = []

    def interrupted_undo() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C in the middle of the undo
        done.append("first")

    with pytest.raises(Interrupted, match="SIGINT"):
        with session(tmp_path) as s:
            s.register(STATE, undo=lambda: done.append("second"))
            s.register(FrozenRecord(), undo=interrupted_undo)
    assert done == ["first", "second"]
    assert list_journals(tmp_path) == []


def test_a_signal_during_a_change_lets_the_change_finish(tmp_path: Path) -> None:
    done: list[str] = []

    def change() -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("made")
        return "ok"

    with pytest.raises(Interrupted):
        with session(tmp_path) as s:
            s.change(FrozenRecord(), do=change, undo=lambda: done.append("undone"))
            pytest.fail("the held-back SIGTERM must be raised after the change")
    assert done == ["made", "undone"]


def test_one_session_per_domain(tmp_path: Path) -> None:
    with session(tmp_path):
        with pytest.raises(LockHeld, match="domain web"):
            with session(tmp_path):
                pass


def test_run_ids_sort_by_time_and_differ() -> None:
    first, second = new_run_id(), new_run_id()
    assert first != second and len(first) == len("20240101T000000Z-abcdef")


def test_an_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    """Under nohup SIGHUP is ignored: the user wants the run to survive the hangup."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with session(tmp_path) as s:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            s.register(STATE, undo=lambda: None)
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
