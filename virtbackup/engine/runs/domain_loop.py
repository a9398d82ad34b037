"""The one loop over the domains of a run, shared by `backup` and `all`.

    jobs (plans, built by the command) -> each domain in turn -> DomainReport per domain

Each domain is planned again when its turn comes (at_its_turn). The commands differ
only in how they select domains and in what `all` adds around each domain's backup
(AllExtras: hooks, retention). One domain's failure is its outcome; a signal ends the
run after the domain at hand is put back, and RunInterrupted then carries a report for
every domain, those not reached included.
"""

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.errors import Interrupted, VirtbackupError
from virtbackup.core.planning import plan_domain
from virtbackup.core.progress import ProgressSink, StepSink
from virtbackup.engine.methods.lvm import LvmSource
from virtbackup.engine.runs.all_domains import AllExtras, DomainReport, back_up_with_extras
from virtbackup.engine.runs.domain_backup import DomainJob, back_up_domain, interrupted_outcomes
from virtbackup.engine.stores.local import LocalStore


class RunInterrupted(Interrupted):
    """A signal ended the run; `reports` covers every domain of it."""

    def __init__(self, cause: Interrupted, reports: list[DomainReport]) -> None:
        super().__init__(cause.message, cause.hint)
        self.reports = reports


def run_domains(
    conn: Hypervisor,
    jobs: Sequence[DomainJob],
    store: LocalStore,
    progress: ProgressSink,
    steps: StepSink,
    extras: AllExtras | None = None,
) -> list[DomainReport]:
    """Each domain's report, in the order of `jobs`. LVM snapshots are shared by the
    domains of the run and removed when it ends."""
    for job in jobs:
        store.check_domain_dir(job.plan.domain.name)  # before any domain is touched
    reports: list[DomainReport] = []
    with ExitStack() as run:
        lvm = LvmSource(run)
        for index, job in enumerate(jobs):
            job = at_its_turn(conn, job)
            try:
                if extras is None:
                    outcome = back_up_domain(
                        conn, job.plan, store, job.options, progress, steps, lvm
                    )
                    reports.append(DomainReport(outcome))
                else:
                    reports.append(
                        back_up_with_extras(conn, job, store, extras, progress, steps, lvm)
                    )
            except Interrupted as err:  # the domain is back; no other one is touched
                names = [j.plan.domain.name for j in jobs[index:]]
                reports += [DomainReport(o) for o in interrupted_outcomes(names, err)]
                raise RunInterrupted(err, reports) from err
    return reports


def at_its_turn(conn: Hypervisor, job: DomainJob) -> DomainJob:
    """The job with its plan made again from the domain as it is now, when the job says
    how. A nightly run over many domains takes hours: a domain shut off, started or
    paused since the run began is backed up as it now is, not as it was. A domain gone
    since keeps its plan, which its method then reports (methods/image_source)."""
    if job.plan_options is None:
        return job
    try:
        dom = conn.find(job.plan.domain.uuid)
        facts = None if dom is None else conn.facts(dom)
    except VirtbackupError:  # gone in between, or libvirt failing: the method says which
        return job
    return job if facts is None else replace(job, plan=plan_domain(facts, job.plan_options))
