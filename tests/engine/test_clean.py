"""kill -9 at every stage of a run, then `virtbackup clean`: the domain is back on its
original chain and in its original state, with nothing left over.

A driver process (tests/consistency_driver.py) opens the consistency window on a real
domain and stops at a stage; the test kills it with SIGKILL, checks that something is
indeed left, runs `virtbackup clean --dry-run` (which must change nothing) and
`virtbackup clean`, and compares the domain with how it was before.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from consistency_helpers import MiB, guest_write, overlays_in, planned, read_raw, snapshot_of
from harness.cli import virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import list_journals
from virtbackup.core.model import Method
from virtbackup.engine.methods.image_source import SourceContext
from virtbackup.engine.methods.stable_images import stable_images

pytestmark = pytest.mark.libvirt

DRIVER = Path(__file__).parent.parent / "consistency_driver.py"


class Run:
    """The driver process, stopped at a stage."""

    def __init__(self, state_dir: Path, domain: str, method: str, stage: str) -> None:
        self.marker = state_dir.parent / f"marker-{stage}"
        self.marker.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(state_dir), domain, method, stage, str(self.marker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(self, stage: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not (self.marker.exists() and self.marker.read_text() == stage):
            if self.proc.poll() is not None:
                pytest.fail(f"driver exited with {self.proc.returncode}: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"driver did not reach {stage} within {timeout}s")
            time.sleep(0.1)

    def go_on(self) -> None:
        self.marker.with_name(self.marker.name + ".go").touch()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def clean_and_check(
    state_dir: Path,
    libvirt: Any,
    dom: Any,
    before: dict[str, Any],
    expect_in_dry_run: str,
    workdir: Path,
) -> None:
    left = snapshot_of(libvirt, dom)
    dry = virtbackup_in(state_dir, "clean", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert expect_in_dry_run in dry.stdout, dry.stdout
    assert snapshot_of(libvirt, dom) == left  # a dry run changes nothing
    assert len(list_journals(state_dir)) == 1

    done = virtbackup_in(state_dir, "clean")
    assert done.returncode == 0, done.stdout + done.stderr
    assert snapshot_of(libvirt, dom) == before
    assert overlays_in(workdir) == []
    assert list_journals(state_dir) == []
    again = virtbackup_in(state_dir, "clean")
    assert again.returncode == 0 and again.stdout.strip() == "nothing to clean"


@pytest.mark.parametrize(
    ("stage", "dry_run_says"),
    [
        ("window", "would merge vda's overlay"),
        ("stream", "would merge vda's overlay"),
        ("commit", "would finish merging vda's overlay"),
        ("pivot", "would delete overlay"),
    ],
)
def test_kill_9_during_a_snapshot_run_then_clean(
    domain_factory: DomainFactory,
    libvirt: Any,
    state_dir: Path,
    stage: str,
    dry_run_says: str,
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], start=True)
    image = Path(snapshot_of(libvirt, dom)["live"][0][2])
    before = snapshot_of(libvirt, dom)
    run = Run(state_dir, dom.name(), "snapshot", stage)
    run.wait_for("window")
    guest_write(dom, "virtio-disk0", 0x22, MiB, MiB)  # goes to the overlay
    if stage != "window":
        run.go_on()
        run.wait_for(stage)
    run.kill()

    live = snapshot_of(libvirt, dom)["live"][0]
    assert (".virtbackup-" in live[2]) == (stage != "pivot")
    assert len(overlays_in(domain_factory.workdir)) == 1
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    clean_and_check(state_dir, libvirt, dom, before, dry_run_says, domain_factory.workdir)
    assert read_raw(image, MiB, MiB) == b"\x22" * MiB  # the guest's write was kept


def test_kill_9_then_domain_destroyed_is_merged_offline(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], start=True)
    image = Path(snapshot_of(libvirt, dom)["live"][0][2])
    before = snapshot_of(libvirt, dom)
    run = Run(state_dir, dom.name(), "snapshot", "window")
    run.wait_for("window")
    guest_write(dom, "virtio-disk0", 0x33, 0, MiB)
    run.kill()
    dom.destroy()  # e.g. the host went down
    assert ".virtbackup-" in snapshot_of(libvirt, dom)["config"][0][2]

    expected = {**before, "live": None, "state": libvirt.VIR_DOMAIN_SHUTOFF}
    clean_and_check(state_dir, libvirt, dom, expected, "(qemu-img commit)", domain_factory.workdir)
    assert read_raw(image, 0, MiB) == b"\x33" * MiB
    dom.create()  # and it boots from its original image
    assert snapshot_of(libvirt, dom)["live"] == before["live"]


def test_kill_9_of_a_paused_domain_run_leaves_it_paused(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    dom.suspend()
    before = snapshot_of(libvirt, dom)
    run = Run(state_dir, dom.name(), "snapshot", "window")
    run.wait_for("window")
    run.kill()
    clean_and_check(state_dir, libvirt, dom, before, "would merge", domain_factory.workdir)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED


def test_kill_9_after_shutdown_then_clean_starts_the_domain(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    before = snapshot_of(libvirt, dom)
    run = Run(state_dir, dom.name(), "shutdown", "window")  # the BIOS: forced off after 2s
    run.wait_for("window")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    run.kill()
    clean_and_check(
        state_dir, libvirt, dom, before, "would start the domain again", domain_factory.workdir
    )
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_a_live_run_is_left_alone_and_the_next_run_finishes_a_dead_one(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    before = snapshot_of(libvirt, dom)
    run = Run(state_dir, dom.name(), "snapshot", "window")
    run.wait_for("window")
    busy = virtbackup_in(state_dir, "clean")
    assert busy.returncode == 0
    assert "in use by a running virtbackup" in busy.stdout
    assert len(overlays_in(domain_factory.workdir)) == 1  # not touched
    locked = virtbackup_in(state_dir, "clean", "--json")
    assert '"busy"' in locked.stdout and dom.name() in locked.stdout
    run.kill()

    # The next run on the domain undoes the dead one's changes before its own.
    with stable_images(
        hypervisor,
        planned(hypervisor, dom.name(), Method.SNAPSHOT, ["vda"]),
        SourceContext(state_dir=state_dir),
    ) as window:
        assert len(overlays_in(domain_factory.workdir)) == 1  # only its own
        assert window.images[0].path == Path(before["live"][0][2])
    assert snapshot_of(libvirt, dom) == before
    assert overlays_in(domain_factory.workdir) == []
    assert list_journals(state_dir) == []
