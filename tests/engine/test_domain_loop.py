"""The one domain loop of `backup` and `all`, against the real libvirtd and real files."""

import os
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters import images
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.config import DomainSettings
from virtbackup.core.model import DomainState, Method
from virtbackup.core.planning import PlanOptions, plan_domain
from virtbackup.core.progress import NullProgress, RecordingSteps
from virtbackup.core.retention import Policy
from virtbackup.engine.runs.all_domains import AllExtras, Hooks
from virtbackup.engine.runs.domain_backup import BackupRunOptions, DomainJob, Result
from virtbackup.engine.runs.domain_loop import run_domains
from virtbackup.engine.stores.local import LocalStore

pytestmark = pytest.mark.libvirt


def jobs_for(
    hypervisor: Hypervisor, *doms: Any, state_dir: Path, keep_last: int = 0
) -> list[DomainJob]:
    settings = DomainSettings(retention=Policy(keep_last=keep_last))
    options = BackupRunOptions(state_dir=state_dir)
    return [
        DomainJob(plan_domain(hypervisor.facts(hypervisor.domain(dom.name()))), options, settings)
        for dom in doms
    ]


def test_each_domain_acts_on_its_plan_in_order(
    domain_factory: DomainFactory, hypervisor: Hypervisor, tmp_path: Path
) -> None:
    off = domain_factory.create([DiskSpec("raw")], hint="off")
    crashed = domain_factory.create([DiskSpec("raw")], hint="crashed")
    gone = domain_factory.create([DiskSpec("raw")], hint="gone")
    (domain_factory.workdir / "gone-disk0.raw").unlink()  # its image is gone
    state_dir = tmp_path / "state"
    jobs = jobs_for(hypervisor, off, crashed, gone, state_dir=state_dir)
    # A state libvirt cannot be asked for on demand: the plan alone decides the skip.
    facts = replace(jobs[1].plan.domain, state=DomainState.CRASHED)
    jobs[1] = replace(jobs[1], plan=plan_domain(facts))
    store = LocalStore(tmp_path / "dest")
    store.dest.mkdir()

    reports = run_domains(hypervisor, jobs, store, NullProgress(), RecordingSteps())

    results = [(r.outcome.domain, r.outcome.result) for r in reports]
    assert results == [
        (off.name(), Result.OK),
        (crashed.name(), Result.SKIPPED),
        (gone.name(), Result.FAILED),
    ]
    assert "crashed" in reports[1].outcome.message
    assert Path(str(reports[0].outcome.backup)).is_dir()
    assert not (store.dest / crashed.name()).exists()
    assert not (store.dest / gone.name()).exists()


def test_all_adds_hooks_and_retention_around_each_backup(
    domain_factory: DomainFactory, hypervisor: Hypervisor, tmp_path: Path
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], hint="extras")
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$VIRTBACKUP_PHASE ${{VIRTBACKUP_RESULT:-}}" >> {log}\n')
    hook.chmod(0o755)
    extras = AllExtras(Hooks((str(hook),), (str(hook),)), UTC)
    store = LocalStore(tmp_path / "dest")
    store.dest.mkdir()
    state_dir = tmp_path / "state"

    reports = []
    for _ in range(2):
        jobs = jobs_for(hypervisor, dom, state_dir=state_dir, keep_last=1)
        reports += run_domains(hypervisor, jobs, store, NullProgress(), RecordingSteps(), extras)

    assert [r.outcome.result for r in reports] == [Result.OK, Result.OK]
    assert log.read_text().split("\n") == ["before ", "after ok", "before ", "after ok", ""]
    first = Path(str(reports[0].outcome.backup)).name
    assert reports[1].pruned == (first,)
    assert [b.stamp for b in store.list_backups(dom.name())] == [
        Path(str(reports[1].outcome.backup)).name
    ]


def test_each_domain_is_planned_again_at_its_turn(
    domain_factory: DomainFactory, hypervisor: Hypervisor, libvirt: Any, tmp_path: Path
) -> None:
    # Planned while shut off, started before its turn (a nightly run takes hours): it is
    # backed up with a snapshot and keeps running, instead of failing as "changed".
    dom = domain_factory.create([DiskSpec("qcow2")], hint="started")
    planned_off = plan_domain(hypervisor.facts(hypervisor.domain(dom.name())), PlanOptions())
    assert planned_off.method == Method.OFFLINE
    job = DomainJob(
        planned_off, BackupRunOptions(state_dir=tmp_path / "state"), plan_options=PlanOptions()
    )
    dom.create()
    store = LocalStore(tmp_path / "dest")
    store.dest.mkdir()

    reports = run_domains(hypervisor, [job], store, NullProgress(), RecordingSteps())

    assert (reports[0].outcome.result, reports[0].outcome.method) == (Result.OK, "snapshot")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    # Without plan_options the plan stands as made: the method sees the change and stops.
    dom.destroy()
    dom.create()
    stale = replace(job, plan_options=None)
    reports = run_domains(hypervisor, [stale], store, NullProgress(), RecordingSteps())
    assert reports[0].outcome.result == Result.FAILED
    assert "run the backup again" in reports[0].outcome.message


def test_a_disk_that_hangs_when_planned_again_fails_its_domain_only(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # qemu-img hangs on a FIFO (or an NFS image whose server is gone) where the image
    # was: the domain fails with one line, the domains before it keep their backups.
    first = domain_factory.create([DiskSpec("raw")], hint="first")
    hung = domain_factory.create([DiskSpec("raw")], hint="hung")
    options = BackupRunOptions(state_dir=tmp_path / "state")
    jobs = [
        DomainJob(
            plan_domain(hypervisor.facts(hypervisor.domain(d.name())), PlanOptions()),
            options,
            plan_options=PlanOptions(),
        )
        for d in (first, hung)
    ]
    image = domain_factory.workdir / "hung-disk0.raw"
    image.unlink()
    os.mkfifo(image)
    monkeypatch.setattr(images, "INFO_TIMEOUT", 1.0)
    store = LocalStore(tmp_path / "dest")
    store.dest.mkdir()

    reports = run_domains(hypervisor, jobs, store, NullProgress(), RecordingSteps())

    assert [r.outcome.result for r in reports] == [Result.OK, Result.FAILED]
    assert "qemu-img did not finish within 1 s" in reports[1].outcome.message
    assert Path(str(reports[0].outcome.backup)).is_dir()
