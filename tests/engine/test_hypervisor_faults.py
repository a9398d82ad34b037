"""Faults a real libvirtd does not produce on demand, injected at the hypervisor seam.

The domains, overlays, block jobs and journals are real (libvirtd, qemu, files); only the
one call under test is made to fail, by a Domain whose method raises as libvirt would.
What is checked is what the user gets: the undo ran (or was kept for clean) and the
error is one line.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from consistency_helpers import overlays_in, planned, snapshot_of
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor.bindings import HypervisorError
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import Domain
from virtbackup.adapters.journal import list_journals
from virtbackup.adapters.locks import domain_lock
from virtbackup.core.consistency_errors import CommitFailed, SnapshotFailed, UndoIncomplete
from virtbackup.core.errors import ExitCode
from virtbackup.core.model import Method
from virtbackup.core.progress import RecordingSteps
from virtbackup.core.undo import FrozenRecord
from virtbackup.engine.methods.image_source import SourceContext
from virtbackup.engine.methods.stable_images import stable_images
from virtbackup.engine.runs.clean import clean
from virtbackup.engine.runs.session import Session

pytestmark = pytest.mark.libvirt


class FaultyHypervisor(Hypervisor):
    """The real connection, handing out domains of `domain_class` (one method broken)."""

    def __init__(self, real: Hypervisor, domain_class: type[Domain]) -> None:
        self._libvirt = real._libvirt
        self._conn = real._conn
        self._domain_class = domain_class

    def domain(self, name: str) -> Domain:
        return self._domain_class(self._libvirt, super().domain(name).handle)

    def find(self, uuid: str) -> Domain | None:
        found = super().find(uuid)
        return None if found is None else self._domain_class(self._libvirt, found.handle)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@contextmanager
def on(hypervisor: Hypervisor) -> Iterator[Hypervisor]:
    yield hypervisor


def window(
    hypervisor: Hypervisor, name: str, state_dir: Path, targets: Sequence[str] = ("vda",)
) -> list[str]:
    """Open and close a snapshot window; the targets it showed (none when it did not open)."""
    shown: list[str] = []
    plan = planned(hypervisor, name, Method.SNAPSHOT, targets)
    with stable_images(hypervisor, plan, SourceContext(state_dir=state_dir)) as opened:
        shown += [image.target for image in opened.images]
    return shown


def test_a_snapshot_reported_failed_after_it_was_made_is_merged_back(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    # libvirt made the overlays, then failed (as when the thaw after a quiesced
    # snapshot fails): the undo registered before the call must find and merge them.
    class MadeThenFailed(Domain):
        def create_overlays(self, xml: str, *, quiesce: bool) -> None:
            super().create_overlays(xml, quiesce=quiesce)
            raise SnapshotFailed(f"cannot create the overlays of {self.name}: thaw failed")

    dom = domain_factory.create([DiskSpec("qcow2"), DiskSpec("raw")], start=True)
    before = snapshot_of(libvirt, dom)
    faulty = FaultyHypervisor(hypervisor, MadeThenFailed)
    with pytest.raises(SnapshotFailed) as caught:
        window(faulty, dom.name(), state_dir, ["vda", "vdb"])
    assert str(caught.value) == f"cannot create the overlays of {dom.name()}: thaw failed"
    assert snapshot_of(libvirt, dom) == before
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert overlays_in(domain_factory.workdir) == []
    assert list_journals(state_dir) == []


def test_a_merge_that_fails_is_kept_for_clean_which_finishes_it(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    class CommitRefused(Domain):
        def start_active_commit(self, target: str) -> None:
            raise CommitFailed(f"cannot start merging the overlay of {self.name} {target}: busy")

    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    before = snapshot_of(libvirt, dom)
    with pytest.raises(UndoIncomplete) as caught:
        window(FaultyHypervisor(hypervisor, CommitRefused), dom.name(), state_dir)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == ExitCode.FAILED
    assert f"cannot start merging the overlay of {dom.name()} vda: busy" in message
    assert "virtbackup clean" in message
    # The domain still writes to the overlay, and the journal says so.
    assert ".virtbackup-" in snapshot_of(libvirt, dom)["live"][0][2]
    assert len(list_journals(state_dir)) == 1
    lock = domain_lock(state_dir, dom.UUIDString(), dom.name())
    assert lock.try_acquire()  # no run holds it: clean may go ahead
    lock.release()

    steps = RecordingSteps()
    result = clean(state_dir, lambda uri: on(hypervisor), steps)
    assert result.problems == [] and result.finished == 1
    assert snapshot_of(libvirt, dom) == before
    assert overlays_in(domain_factory.workdir) == []
    assert list_journals(state_dir) == []


def test_a_guest_agent_that_is_gone_does_not_stop_the_undo(
    domain_factory: DomainFactory, hypervisor: Hypervisor, state_dir: Path
) -> None:
    # The domain has no agent at all: libvirt refuses the thaw for real.
    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    steps = RecordingSteps()
    domain = hypervisor.domain(dom.name())
    with Session(state_dir, hypervisor, domain.uuid, domain.name, steps=steps) as session:
        session.register(FrozenRecord())
    assert list_journals(state_dir) == []
    [(name, warning)] = steps.warnings
    assert name == dom.name()
    assert warning.startswith("cannot ask the guest agent to thaw the filesystems (")
    assert "virsh domfsthaw" in warning and "\n" not in warning


def test_a_failing_libvirt_call_is_one_line_and_changes_nothing(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, state_dir: Path
) -> None:
    class Unreadable(Domain):
        def config_xml(self) -> str | None:
            raise HypervisorError(f"cannot read the definition of {self.name}: connection reset")

    dom = domain_factory.create([DiskSpec("qcow2")], start=True)
    before = snapshot_of(libvirt, dom)
    with pytest.raises(HypervisorError) as caught:
        window(FaultyHypervisor(hypervisor, Unreadable), dom.name(), state_dir)
    assert str(caught.value) == f"cannot read the definition of {dom.name()}: connection reset"
    assert caught.value.exit_code == ExitCode.FAILED
    assert snapshot_of(libvirt, dom) == before
    assert overlays_in(domain_factory.workdir) == []
    assert list_journals(state_dir) == []
