"""The one loop over the domains of a run, shared by `backup` and `all`.

    jobs (plans, built by the command) -> each domain in turn -> DomainReport per domain

The commands differ only in how they select domains and in what `all` adds around each
domain's backup (AllExtras: hooks, retention). One domain's failure is its outcome;
a signal ends the run after the domain at hand is put back, and RunInterrupted then
carries a report for every domain, those not reached included.
"""

from collections.abc import Sequence
from contextlib import ExitStack

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.errors import Interrupted
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
