"""`virtbackup all`: the nightly job against real domains in different states."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.cli import NO_HOST_CONFIG, virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory
from repository_helpers import age_chunks, chunk_data, names_of, write_backup

from virtbackup.adapters.locks import POLL_SECONDS, host_lock
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore


def has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has a descriptor open on `path`."""
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) == str(path):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_state_retention_hooks_and_summary(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    off = domain_factory.create([DiskSpec("raw")], hint="off")
    running = domain_factory.create([DiskSpec("qcow2")], hint="running", start=True)
    paused = domain_factory.create(hint="paused", start=True)
    paused.suspend()
    skipped = domain_factory.create(hint="skipped")
    hook_log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        '#!/bin/sh\necho "$VIRTBACKUP_PHASE $VIRTBACKUP_DOMAIN ${VIRTBACKUP_RESULT:-}" >> '
        f"{hook_log}\n"
    )
    hook.chmod(0o755)
    config = write_config(
        tmp_path / "virtbackup.toml",
        f'dest = "{dest}"\ninclude = ["{domain_factory.name("*")}"]\n'
        f'exclude = ["{skipped.name()}"]\n'
        f'[retention]\nkeep_last = 1\n[hooks]\nbefore = ["{hook}"]\nafter = ["{hook}"]\n',
    )
    first = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert first.returncode == 0, first.stderr
    second = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert second.returncode == 0, second.stderr

    rows = {r["domain"]: r for r in json.loads(second.stdout)["domains"]}
    assert set(rows) == {off.name(), running.name(), paused.name()}
    assert {n: r["method"] for n, r in rows.items()} == {
        off.name(): "offline",
        running.name(): "backup-api",  # auto, qcow2 disks, the repository: the backup API
        paused.name(): "backup-api",
    }
    assert all(r["result"] == "ok" and len(r["pruned"]) == 1 for r in rows.values())
    for name in rows:  # keep_last = 1: only the second run's backup is left
        assert [p.name for p in (dest / name).iterdir()] == [Path(rows[name]["backup"]).name]
    assert running.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert paused.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert off.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

    summary = dest / "virtbackup-last-run.json"
    assert stat.S_IMODE(summary.stat().st_mode) == 0o600
    assert json.loads(summary.read_text()) == json.loads(second.stdout)
    lines = hook_log.read_text().splitlines()
    assert f"before {off.name()} " in lines and f"after {off.name()} ok" in lines
    assert len(lines) == 12  # two runs, three domains, two phases


def test_a_failing_domain_fails_the_run_not_the_others(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    good = domain_factory.create(hint="good")
    broken = domain_factory.create([DiskSpec("raw")], hint="broken")
    (domain_factory.workdir / "broken-disk0.raw").unlink()
    result = virtbackup_in(
        state_dir, "all", "--dest", str(dest), "--include", domain_factory.name("*"), "--json"
    )
    assert result.returncode == 1
    rows = {r["domain"]: r for r in json.loads(result.stdout)["domains"]}
    assert rows[good.name()]["result"] == "ok"
    assert rows[broken.name()]["result"] == "failed"
    assert json.loads((dest / "virtbackup-last-run.json").read_text())["exit_code"] == 1


def test_a_second_run_exits_3_or_waits(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    dom = domain_factory.create(hint="locked")
    args = ("all", "--dest", str(dest), "--include", dom.name())
    lock = host_lock(state_dir)
    lock.acquire()
    try:
        held = virtbackup_in(state_dir, *args)
        assert held.returncode == 3
        assert held.stderr.startswith("virtbackup: error: ")
        assert str(os.getpid()) in held.stderr
        waiting = subprocess.Popen(
            [sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, *args, "--wait"],
            env={**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Queued behind our lock: it has the lock file open and polls it. Waited for
        # rather than slept on: on a loaded host its start alone can take seconds.
        deadline = time.monotonic() + 120
        while not has_open(waiting.pid, lock.path):
            assert waiting.poll() is None, "the second run ended while the lock was held"
            assert time.monotonic() < deadline, "the second run never reached the lock"
            time.sleep(0.1)
        time.sleep(3 * POLL_SECONDS)  # a few polls of the held lock
        assert waiting.poll() is None
    finally:
        lock.release()
    assert waiting.wait(timeout=300) == 0
    assert len(list((dest / dom.name()).iterdir())) == 1


def test_config_mistakes_are_named(state_dir: Path, dest: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "bad.toml", f'dest = "{dest}"\n\n[retention]\nkeep_dayly = 7\n'
    )
    result = virtbackup_in(state_dir, "--config", str(config), "all")
    assert result.returncode == 2
    assert result.stderr == (
        f"virtbackup: error: {config}:4: retention.keep_dayly: unknown key "
        "(known here: keep_daily, keep_last, keep_monthly, keep_weekly, keep_yearly)\n"
    )


def test_sigterm_ends_the_whole_run_with_130(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    """A stop of the service in the middle of `all` (here: the first domain's before
    hook sends SIGTERM to virtbackup) ends the run, not just that domain: the running
    domain is back on its own image, no later domain is started, exit 130."""
    first = domain_factory.create([DiskSpec("qcow2")], hint="term-a", start=True)
    second = domain_factory.create(hint="term-b")
    config = write_config(
        tmp_path / "virtbackup.toml",
        f'dest = "{dest}"\ninclude = ["{domain_factory.name("term-*")}"]\n'
        '[hooks]\nbefore = ["sh", "-c", "kill -TERM $PPID; sleep 5"]\n',
    )
    result = virtbackup_in(state_dir, "--config", str(config), "all")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "virtbackup: error: interrupted by SIGTERM"
    assert not list(dest.glob(f"{second.name()}/*")) and not list(dest.glob(f"{first.name()}/*"))
    assert first.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert "virtbackup" not in first.XMLDesc(0)


def test_a_broken_stamp_directory_does_not_fail_retention(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    """A stamp directory without a manifest beside the backups of a domain (whose legal
    name is also rich markup): the nightly run still prunes, names the directory as a
    warning, exits 0, and shows the name as it is."""
    dom = domain_factory.create([DiskSpec("raw")], hint="a[bold]b")
    name = dom.name()
    config = write_config(
        tmp_path / "virtbackup.toml",
        f'dest = "{dest}"\ninclude = ["{domain_factory.name("a?bold?b")}"]\n'
        "[retention]\nkeep_last = 1\n",
    )
    first = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert first.returncode == 0, first.stderr
    broken = dest / name / "20250101T000000Z"
    broken.mkdir()
    (broken / "vda.raw.lz4").write_bytes(b"half of an old copy")

    second = virtbackup_in(state_dir, "--config", str(config), "all")
    assert second.returncode == 0, second.stderr
    assert f"│ {name}" in second.stdout  # the summary table, brackets and all
    assert "left alone by retention" in second.stdout
    (row,) = json.loads((dest / "virtbackup-last-run.json").read_text())["domains"]
    assert (row["result"], len(row["pruned"])) == ("ok", 1)
    assert row["warnings"] == [
        f"left alone by retention: {broken} is not a backup (it has no manifest.json)"
    ]
    assert sorted(p.name for p in (dest / name).iterdir()) == sorted(
        [broken.name, Path(row["backup"]).name]
    )
    assert (broken / "vda.raw.lz4").read_bytes() == b"half of an old copy"

    listed = virtbackup_in(state_dir, "list", name)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout


def test_gc_runs_once_after_retention_when_dest_holds_a_repository(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    off = domain_factory.create([DiskSpec("raw")], hint="gc")
    dest.chmod(0o700)
    kept = chunk_data(1) + chunk_data(2)
    old = write_backup(dest, "repo1", {"vda": kept + chunk_data(3)}, number=0)
    write_backup(dest, "repo1", {"vda": kept}, number=1)
    LocalStore(dest).remove("repo1", old.name)  # as prune does
    age_chunks(ChunkStore(dest))
    config = write_config(
        tmp_path / "virtbackup.toml",
        f'dest = "{dest}"\ninclude = ["{off.name()}"]\ngc_grace = 0\n[retention]\nkeep_last = 1\n',
    )
    result = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (row,) = document["domains"]
    assert row["result"] == "ok"
    # the domain's own backup went to the repository (the default layout): its chunks stay
    (index,) = Path(row["backup"]).glob("*.idx")
    own = {line.split("/")[1] for line in index.read_text().splitlines()}
    assert own and not own & set(names_of(kept + chunk_data(3)))
    assert document["gc"]["removed_chunks"] == 1
    assert document["gc"]["kept_chunks"] == 2 + len(own)
    assert {name for name, _ in ChunkStore(dest).names()} == set(names_of(kept)) | own
    assert json.loads((dest / "virtbackup-last-run.json").read_text())["gc"] == document["gc"]

    (dest / "repo1" / f"{old.name}-2").mkdir(mode=0o700)  # no manifest: left alone
    ((dest / "repo1" / f"{old.name}-2") / "vda.raw.idx").write_bytes(b"x")
    failed = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert failed.returncode == 1
    assert "gc stopped before removing anything" in json.loads(failed.stdout)["gc"]["error"]
    assert failed.stderr.strip().endswith("verify it, then repair or remove it")
