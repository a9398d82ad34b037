"""The journal file is durable and atomic; locks exclude other holders and name them."""

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtbackup.adapters.journal import (
    JournalFile,
    StateDirError,
    ensure_state_subdir,
    list_journals,
    load_journal,
    resolve_state_dir,
)
from virtbackup.adapters.locks import domain_lock, host_lock, remote_repository_lock
from virtbackup.core.errors import ExitCode, LockHeld
from virtbackup.core.model import DomainState
from virtbackup.core.undo import FrozenRecord, Journal, JournalError, StateRecord


def header(run_id: str = "20240101T000000Z-aaaaaa") -> Journal:
    return Journal(run_id, os.getpid(), "2024-01-01T00:00:00Z", "qemu:///system", "UU", "web")


def test_state_dir_from_option_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIRTBACKUP_STATE_DIR", raising=False)
    assert resolve_state_dir() == Path("/var/lib/virtbackup")
    monkeypatch.setenv("VIRTBACKUP_STATE_DIR", "/tmp/x")
    assert resolve_state_dir() == Path("/tmp/x")
    assert resolve_state_dir(Path("/y")) == Path("/y")


def test_journal_file_adds_removes_and_vanishes_when_empty(tmp_path: Path) -> None:
    journal = JournalFile.for_run(tmp_path, header())
    assert not journal.path.exists()  # nothing written before the first record
    first = journal.add(StateRecord(DomainState.RUNNING, restart=True))
    second = journal.add(FrozenRecord())
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.path.parent.stat().st_mode) == 0o700
    assert load_journal(journal.path) == journal.journal
    assert [r["kind"] for r in json.loads(journal.path.read_text())["records"]] == [
        "state",
        "frozen",
    ]
    journal.remove(second)
    assert [e.id for e in load_journal(journal.path).entries] == [first]
    journal.remove(first)
    assert not journal.path.exists()
    assert list(journal.path.parent.iterdir()) == []  # no temporary left behind


def test_journals_are_listed_oldest_first_and_by_domain(tmp_path: Path) -> None:
    JournalFile.for_run(tmp_path, header("20240102T000000Z-bbbbbb")).add(FrozenRecord())
    JournalFile.for_run(tmp_path, header("20240101T000000Z-aaaaaa")).add(FrozenRecord())
    names = [p.name for p in list_journals(tmp_path)]
    assert names == ["UU.20240101T000000Z-aaaaaa.json", "UU.20240102T000000Z-bbbbbb.json"]
    assert list_journals(tmp_path, "other") == []
    assert list_journals(tmp_path / "missing") == []


def test_a_corrupt_journal_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{torn")
    with pytest.raises(JournalError, match="cannot read journal"):
        load_journal(bad)


def _hold(
    state_dir: Path,
    ready: "multiprocessing.synchronize.Event",
    done: "multiprocessing.synchronize.Event",
) -> None:  # noqa: E501
    lock = domain_lock(state_dir, "UU", "web")
    lock.acquire()
    ready.set()
    done.wait(60)


def test_a_domain_lock_held_elsewhere_gives_exit_3_naming_domain_and_pid(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        lock = domain_lock(tmp_path, "UU", "web")
        with pytest.raises(LockHeld) as caught:
            lock.acquire(wait=0.6)
        assert caught.value.exit_code == ExitCode.LOCKED == 3
        assert "domain web" in str(caught.value) and f"pid {holder.pid}" in str(caught.value)
        assert not lock.try_acquire()
    finally:
        done.set()
        holder.join(30)
    # The holder is gone: the kernel dropped its lock.
    with domain_lock(tmp_path, "UU", "web") as lock:
        assert lock.held and lock.holder_pid() == os.getpid()
    assert lock.holder_pid() is None


def test_locks_exclude_within_one_process_and_the_host_lock_is_separate(tmp_path: Path) -> None:
    first = domain_lock(tmp_path, "UU", "web")
    first.acquire()
    assert not domain_lock(tmp_path, "UU", "web").try_acquire()
    assert domain_lock(tmp_path, "OTHER", "db").try_acquire()
    with host_lock(tmp_path):
        with pytest.raises(LockHeld, match="this host"):
            host_lock(tmp_path).acquire()
    first.release()
    assert domain_lock(tmp_path, "UU", "web").try_acquire()


def test_uploads_share_the_remote_repository_lock_and_its_gc_excludes_them(
    tmp_path: Path,
) -> None:
    with remote_repository_lock(tmp_path, shared=True):
        with remote_repository_lock(tmp_path, shared=True):  # two uploads at once
            gc = remote_repository_lock(tmp_path, shared=False)
            with pytest.raises(LockHeld, match="the remote repository is in use"):
                gc.acquire()
    with remote_repository_lock(tmp_path, shared=False):
        assert not remote_repository_lock(tmp_path, shared=True).try_acquire()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_in_a_journal_file_are_a_journal_error_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("journal") / "x.json"
    path.write_bytes(data)
    try:
        load_journal(path)
    except JournalError:
        pass


def test_a_linked_state_directory_is_judged_by_what_it_points_to(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(real)
    assert ensure_state_subdir(link / "locks") == link / "locks"
    assert stat.S_IMODE((real / "locks").stat().st_mode) == 0o700
    os.chmod(real, 0o777)
    with pytest.raises(StateDirError) as refused:
        ensure_state_subdir(link / "journal")
    assert refused.value.exit_code == ExitCode.USAGE
    assert str(refused.value) == f"state directory {link} is writable by group or others: " + (
        f"run 'chmod 0700 {link}'"
    )
    assert not (real / "journal").exists()
