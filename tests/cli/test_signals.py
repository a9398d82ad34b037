"""A real SIGINT, SIGTERM or SIGHUP ends the whole run with exit 130, after the domain at
hand is put back: no further domain is touched, and nothing partial is left. The backups
are written in the default layout, the repository: the chunks an interrupted backup
stored stay for gc, its writer registration goes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import disk_of, make_backup
from consistency_helpers import MiB, overlays_in, snapshot_of
from harness.cli import virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.journal import list_journals
from virtbackup.core.repository_format import REPOSITORY_DIR
from virtbackup.engine.stores.chunk_store import ChunkStore

pytestmark = pytest.mark.libvirt

STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def random_image(path: Path, size: int) -> Path:
    """Incompressible data in every block: the stream reads (and throttles) all of it."""
    with open(path, "wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
    return path


def tree(root: Path) -> list[str]:
    """Everything under `root` but DEST's own records (.virtbackup-runs) and repository,
    which `repository_at_rest` checks."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.relative_to(root).parts[0].startswith(".virtbackup")
    )


def repository_at_rest(dest: Path) -> bool:
    """No writer registered and no chunk half written: only chunks gc may take."""
    chunks = ChunkStore(dest)
    return list(chunks.writers.iterdir()) == [] and list(chunks.temporary_files()) == []


def spawn(state_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "virtbackup", *args],
        env={**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_growth(proc: subprocess.Popen[Any], pattern: str, root: Path, at_least: int) -> Path:
    """The file matching `pattern` under `root` once it holds `at_least` bytes."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"virtbackup exited with {proc.returncode} first: {proc.communicate()}")
        for found in root.glob(pattern):
            try:
                if found.stat().st_size >= at_least:
                    return found
            except FileNotFoundError:
                continue
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {pattern} of {at_least} bytes under {root} in time")


def wait_for_first_chunk(proc: subprocess.Popen[Any], domain: str, dest: Path) -> Path:
    """The partial backup of `domain` once its disk is under way: a MiB of a chunk is in
    DEST's repository (the partial directory is made before any chunk)."""
    wait_for_growth(proc, f"{REPOSITORY_DIR}/chunks/*/*", dest, MiB)
    (partial,) = (dest / domain).glob(".*.partial")
    return partial


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_mid_stream_ends_all_with_130(
    signum: int,
    domain_factory: DomainFactory,
    libvirt: Any,
    state_dir: Path,
    dest: Path,
) -> None:
    image = random_image(domain_factory.workdir / "sig-a.raw", 32 * MiB)
    first = domain_factory.create([DiskSpec("raw", image=image)], hint="sig-a", start=True)
    second = domain_factory.create([DiskSpec("qcow2")], hint="sig-b", start=True)
    before = {dom.name(): snapshot_of(libvirt, dom) for dom in (first, second)}
    proc = spawn(
        state_dir,
        "all",
        "--dest",
        str(dest),
        "--include",
        domain_factory.name("sig-*"),
        "--method",
        "snapshot",
        "--bwlimit",
        "2M",
    )
    # The first domain's disk is under way (4 MiB chunks at 2 MB/s: 16 s).
    partial = wait_for_first_chunk(proc, first.name(), dest)
    assert overlays_in(domain_factory.workdir)  # the domain runs on our overlay now
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    name = signal.Signals(signum).name

    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"virtbackup: error: interrupted by {name}"
    assert "Traceback" not in err
    # The first domain is back: running on its own image, no overlay, no snapshot.
    assert snapshot_of(libvirt, first) == before[first.name()]
    assert f"<source file='{image}'" in first.XMLDesc(0)
    assert "virtbackup" not in first.XMLDesc(0)
    assert first.snapshotListNames() == []
    assert overlays_in(domain_factory.workdir) == []
    # The second domain was not touched.
    assert snapshot_of(libvirt, second) == before[second.name()]
    assert not (dest / second.name()).exists()
    # The partial backup went with the run, and the summary says what happened.
    assert not partial.exists()
    assert tree(dest) == [first.name(), "virtbackup-last-run.json"]
    # chunks it named are left to gc; those not yet named went with the run
    assert repository_at_rest(dest)
    summary = json.loads((dest / "virtbackup-last-run.json").read_text())
    assert summary["exit_code"] == 130
    assert [(r["domain"], r["result"], r["message"]) for r in summary["domains"]] == [
        (first.name(), "interrupted", f"interrupted by {name}"),
        (second.name(), "interrupted", "not started: the run was interrupted"),
    ]
    assert "interrupted" in out
    assert list_journals(state_dir) == []  # every undo was done, none left for clean

    # Nothing is left for the next run or `clean` to do.
    cleaned = virtbackup_in(state_dir, "clean", "--dest", str(dest))
    assert (cleaned.returncode, cleaned.stdout) == (0, "nothing to clean\n"), cleaned.stderr
    assert tree(dest) == [first.name(), "virtbackup-last-run.json"]


def test_a_hangup_of_the_terminal_unwinds_and_exits_130(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    """ssh dropped: the terminal the run writes to is gone (every write fails with EIO)
    and SIGHUP arrives. The run still puts the domain back and exits 130; the last line,
    which no terminal can show any more, goes to the log file, and no traceback anywhere."""
    image = random_image(domain_factory.workdir / "hup.raw", 32 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="hup", start=True)
    before = snapshot_of(libvirt, dom)
    log_file = tmp_path / "run.log"
    master, terminal = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "virtbackup", "--log-file", str(log_file), "backup", dom.name()]
        + ["--dest", str(dest), "--method", "snapshot", "--bwlimit", "2M"],
        env={**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir), "TERM": "xterm"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        wait_for_first_chunk(proc, dom.name(), dest)
    finally:
        os.close(master)  # the terminal hangs up
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=300) == 130

    assert snapshot_of(libvirt, dom) == before
    assert "virtbackup" not in dom.XMLDesc(0)
    assert overlays_in(domain_factory.workdir) == []
    assert tree(dest) == [dom.name()] and repository_at_rest(dest)
    logged = log_file.read_text()
    assert logged.splitlines()[-1].endswith("ERROR interrupted by SIGHUP"), logged
    assert "Traceback" not in logged


def test_sigterm_during_restore_leaves_no_image_that_looks_complete(tmp_path: Path) -> None:
    """Frozen (SIGSTOP) while the first disk is half written, then SIGTERM: exit 130,
    and `--to` holds neither that image under its name nor its hidden half."""
    disks = [
        disk_of(random_image(tmp_path / "a.raw", 96 * MiB)),
        disk_of(random_image(tmp_path / "b.raw", 8 * MiB), "vdb"),
    ]
    backup = make_backup(tmp_path / "dest", disks).path
    to = tmp_path / "restored"
    proc = spawn(tmp_path / "state", "restore", str(backup), "--to", str(to))
    half = wait_for_growth(proc, ".vda.raw.restoring", to, 1)
    proc.send_signal(signal.SIGSTOP)
    try:
        assert half.exists() and tree(to) == [".vda.raw.restoring"]  # caught mid-write
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "virtbackup: error: interrupted by SIGTERM"
    assert "Traceback" not in err
    assert tree(to) == []


def test_backup_of_two_domains_stops_at_the_first_and_says_so(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path
) -> None:
    image = random_image(domain_factory.workdir / "two-a.raw", 32 * MiB)
    first = domain_factory.create([DiskSpec("raw", image=image)], hint="two-a", start=True)
    second = domain_factory.create([DiskSpec("raw")], hint="two-b")
    before = {dom.name(): snapshot_of(libvirt, dom) for dom in (first, second)}
    proc = spawn(
        state_dir,
        "backup",
        first.name(),
        second.name(),
        "--dest",
        str(dest),
        "--bwlimit",
        "2M",
        "--json",
    )
    wait_for_first_chunk(proc, first.name(), dest)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "virtbackup: error: interrupted by SIGTERM"
    summary = json.loads(out)
    assert summary["exit_code"] == 130
    assert [(r["domain"], r["result"], r["message"]) for r in summary["domains"]] == [
        (first.name(), "interrupted", "interrupted by SIGTERM"),
        (second.name(), "interrupted", "not started: the run was interrupted"),
    ]
    assert {dom.name(): snapshot_of(libvirt, dom) for dom in (first, second)} == before
    assert tree(dest) == [first.name()] and repository_at_rest(dest)


def test_under_nohup_a_hangup_does_not_stop_the_backup(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    image = random_image(domain_factory.workdir / "nohup.raw", 12 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="nohup", start=True)
    proc = subprocess.Popen(
        ["nohup", sys.executable, "-m", "virtbackup", "backup", dom.name()]
        + ["--dest", str(dest), "--bwlimit", "2M"],
        env={**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_first_chunk(proc, dom.name(), dest)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [p.name for p in (dest / dom.name()).iterdir() if not p.name.startswith(".")]


def test_a_hangup_with_stdout_gone_still_exits_130_with_its_line(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path
) -> None:
    """Whoever read stdout is gone (a closed pipe): the summary cannot be written, and
    that changes neither the exit code nor the last line on stderr."""
    image = random_image(domain_factory.workdir / "pipe.raw", 16 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="pipe", start=True)
    before = snapshot_of(libvirt, dom)
    proc = spawn(state_dir, "backup", dom.name(), "--dest", str(dest), "--bwlimit", "2M")
    assert proc.stdout is not None
    proc.stdout.close()  # the reader of stdout goes away
    wait_for_first_chunk(proc, dom.name(), dest)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)

    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "virtbackup: error: interrupted by SIGHUP"
    assert "Traceback" not in err and "Exception ignored" not in err
    assert snapshot_of(libvirt, dom) == before
    assert tree(dest) == [dom.name()] and repository_at_rest(dest)


def test_a_burst_of_sigterms_still_exits_130(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path
) -> None:
    """systemd and impatient users send more than one: the run unwinds once, and the
    ones that arrive while it exits do not turn exit 130 into death by signal (143)."""
    image = random_image(domain_factory.workdir / "burst.raw", 16 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="burst", start=True)
    before = snapshot_of(libvirt, dom)
    proc = spawn(state_dir, "backup", dom.name(), "--dest", str(dest), "--bwlimit", "2M")
    wait_for_first_chunk(proc, dom.name(), dest)
    while proc.poll() is None:  # until it has exited, whatever it was doing
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "virtbackup: error: interrupted by SIGTERM" in err
    assert snapshot_of(libvirt, dom) == before
    assert repository_at_rest(dest)
