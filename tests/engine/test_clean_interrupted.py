"""A signal during `clean`: the undo at hand is finished (and dropped from the journal),
then clean stops with exit 130; what is left stays in the journal for the next clean."""

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from virtbackup.adapters.journal import JournalFile, list_journals, load_journal
from virtbackup.cli.main import main
from virtbackup.core.errors import Interrupted
from virtbackup.core.model import DomainState
from virtbackup.core.progress import LogSteps
from virtbackup.core.undo import FrozenRecord, Journal, StateRecord, UndoRecord
from virtbackup.engine.runs.clean import clean
from virtbackup.engine.runs.session import new_run_id
from virtbackup.engine.runs.undo import Undoer

UUID = "0b6c7e2a-52d4-4f5e-9a57-1c3d2b9e8f10"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A dead run's journal: the domain was running and its guest was frozen."""
    journal = JournalFile.for_run(
        tmp_path / "state",
        Journal(
            run_id=new_run_id(),
            pid=2**22 + 1,  # above pid_max's default: no such process
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            uri="test:///default",
            domain_uuid=UUID,
            domain_name="web1",
        ),
    )
    journal.add(StateRecord(was=DomainState.RUNNING, restart=False))
    journal.add(FrozenRecord())
    return tmp_path / "state"


@pytest.fixture
def undone(monkeypatch: pytest.MonkeyPatch, signum: int) -> Iterator[list[str]]:
    """Undos that succeed; the first one receives `signum` while it works."""
    done: list[str] = []

    def undo(self: Undoer, record: UndoRecord) -> None:
        if not done:
            os.kill(os.getpid(), signum)  # e.g. the service is stopped now
        done.append(record.kind)

    monkeypatch.setattr(Undoer, "undo", undo)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield done
    for s, handler in handlers.items():
        signal.signal(s, handler)


def no_connection(uri: str) -> Any:
    return nullcontext(None)


def left_in_journal(state_dir: Path) -> list[str]:
    return [e.record.kind for path in list_journals(state_dir) for e in load_journal(path).entries]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_clean_finishes_the_undo_at_hand_then_stops(
    state_dir: Path, undone: list[str], signum: int
) -> None:
    with pytest.raises(Interrupted, match=f"interrupted by {signal.Signals(signum).name}"):
        clean(state_dir, no_connection, LogSteps())
    assert undone == ["frozen"]  # newest first; the next record was not started
    assert left_in_journal(state_dir) == ["state"]


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_clean_interrupted_exits_130_with_one_line(
    state_dir: Path,
    undone: list[str],
    signum: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VIRTBACKUP_STATE_DIR", str(state_dir))
    monkeypatch.setattr("virtbackup.cli.clean_cmd.connect", no_connection)
    root = logging.getLogger()  # main sets up logging: leave it as it was for other tests
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    with pytest.raises(SystemExit) as exited:
        main(["clean"])
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "virtbackup: error: interrupted by SIGTERM"
    assert "Traceback" not in err
    assert undone == ["frozen"]
    assert left_in_journal(state_dir) == ["state"]
