"""Undoing a backup job on a real running domain: only a job serving on the run's own
socket is ended, and only files of the kinds a job leaves are removed."""

import os
import socket
import uuid
from pathlib import Path

import pytest
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.backup_job import SOCKET_DIR, pull_backup_xml, scratch_path, socket_path
from virtbackup.core.progress import RecordingSteps
from virtbackup.core.undo import BackupJobRecord
from virtbackup.engine.runs.undo import UndoBlocked, Undoer

pytestmark = pytest.mark.libvirt
MiB = 1024 * 1024
RUN = "20240102T030405Z-abcdef"


def test_another_tools_job_is_left_alone_and_only_job_files_are_removed(
    domain_factory: DomainFactory, hypervisor: Hypervisor, tmp_path: Path
) -> None:
    raw = domain_factory.create([DiskSpec("qcow2", 8 * MiB)], hint="undo", start=True)
    dom = hypervisor.domain(raw.name())
    image = str(domain_factory.workdir / "undo-disk0.qcow2")
    ours = BackupJobRecord(
        str(socket_path(dom.uuid, RUN)),
        (str(scratch_path(image, "vda", dom.uuid, RUN, None)),),
    )
    Path(ours.scratch[0]).write_bytes(b"left by a killed run")
    steps = RecordingSteps()
    undoer = Undoer(hypervisor, dom.uuid, dom.name, steps)

    # a job of another tool (its own socket) runs: neither it nor our files are touched
    foreign = Path(SOCKET_DIR) / f"vbtest-{uuid.uuid4().hex[:8]}.sock"
    foreign_scratch = domain_factory.workdir / "foreign.scratch"
    job = pull_backup_xml(str(foreign), {"vda": str(foreign_scratch)}, ["vda"])
    dom.backups.begin_pull(job, None)
    try:
        with pytest.raises(UndoBlocked, match="a backup job that is not ours runs"):
            undoer.undo(ours)
        assert dom.backups.job_xml() is not None and os.path.exists(ours.scratch[0])
    finally:
        dom.backups.abort()

    # something in a scratch file's place that no job leaves: kept, and said
    os.unlink(ours.scratch[0])
    os.mkdir(ours.scratch[0])
    with pytest.raises(UndoBlocked, match="is not what a backup job leaves"):
        undoer.undo(ours)
    os.rmdir(ours.scratch[0])

    # no job any more: the scratch file and the socket go
    Path(ours.scratch[0]).write_bytes(b"left by a killed run")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(ours.socket)
    undoer.undo(ours)
    assert not os.path.lexists(ours.scratch[0]) and not os.path.lexists(ours.socket)
    undoer.undo(ours)  # twice is harmless
    assert raw.isActive()


def test_our_job_is_ended_and_a_dry_run_only_says_so(
    domain_factory: DomainFactory, hypervisor: Hypervisor
) -> None:
    raw = domain_factory.create([DiskSpec("qcow2", 8 * MiB)], hint="ours", start=True)
    dom = hypervisor.domain(raw.name())
    image = str(domain_factory.workdir / "ours-disk0.qcow2")
    ours = BackupJobRecord(
        str(socket_path(dom.uuid, RUN)),
        (str(scratch_path(image, "vda", dom.uuid, RUN, None)),),
    )
    dom.backups.begin_pull(pull_backup_xml(ours.socket, {"vda": ours.scratch[0]}, ["vda"]), None)
    try:
        steps = RecordingSteps()
        Undoer(hypervisor, dom.uuid, dom.name, steps, dry_run=True).undo(ours)
        assert steps.steps == [(dom.name, f"would end the backup job on {ours.socket}")]
        assert dom.backups.job_xml() is not None
        Undoer(hypervisor, dom.uuid, dom.name, RecordingSteps()).undo(ours)
        assert dom.backups.job_xml() is None
        assert not os.path.lexists(ours.socket) and not os.path.lexists(ours.scratch[0])
    finally:
        dom.backups.abort()
    assert raw.isActive()
