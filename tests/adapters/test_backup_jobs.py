"""Pull backup jobs, checkpoints and reading their NBD exports, on a real running domain."""

import os
import subprocess
import sys
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from consistency_helpers import guest_write
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.adapters.hypervisor.bindings import HypervisorError
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.nbd_export import ALLOCATION, NbdError, NbdExport, dirty_bitmap
from virtbackup.core.backup_job import (
    SOCKET_DIR,
    checkpoint_xml,
    pull_backup_xml,
)
from virtbackup.engine.datapath.nbd_source import NbdLocation, NbdSource

MiB = 1024 * 1024


def _begin(dom: Any, workdir: Path, checkpoint: str, since: str | None = None) -> Path:
    socket = Path(SOCKET_DIR) / f"vbtest-{uuid.uuid4().hex[:8]}.sock"
    scratch = workdir / f"vda-{checkpoint}.scratch"
    backup = pull_backup_xml(str(socket), {"vda": str(scratch)}, ["vda"], since)
    dom.backups.begin_pull(backup, checkpoint_xml(checkpoint, ["vda"], ["vda"]))
    return socket


def _read_all(source: NbdSource) -> bytes:
    data = bytearray(source.size)
    source.read_into(memoryview(data), 0)
    return bytes(data)


# Reads the whole export `rounds` times in 4 MiB pieces; prints its peak RSS in KiB.
_READER = """
import resource, sys
from pathlib import Path
from virtbackup.adapters.nbd_export import NbdExport
export = NbdExport.connect(Path(sys.argv[1]), "vda")
data = memoryview(bytearray(4 << 20))
for _ in range(int(sys.argv[2])):
    for offset in range(0, export.size, len(data)):
        export.read_into(data, offset)
export.close()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_reading(socket: Path, rounds: int) -> int:
    """Peak RSS in bytes of a process that reads the export `rounds` times over."""
    argv = [sys.executable, "-c", _READER, str(socket), str(rounds)]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(result.stdout) * 1024


def test_pull_jobs_serve_the_instant_and_the_changes_since_a_checkpoint(
    domain_factory: DomainFactory, hypervisor: Hypervisor
) -> None:
    raw = domain_factory.create([DiskSpec("qcow2", 16 * MiB)], start=True)
    dom = hypervisor.domain(raw.name())
    guest_write(raw, "virtio-disk0", 7, 1 * MiB, 2 * MiB)
    socket = _begin(dom, domain_factory.workdir, "cp1")
    assert dom.backups.job_xml() is not None
    guest_write(raw, "virtio-disk0", 9, 1 * MiB, 1 * MiB)  # after the instant: not served
    with pytest.raises(NbdError, match="does not offer qemu:dirty-bitmap"):
        NbdSource(NbdLocation(socket, "vda", dirty_bitmap("vda")))
    source = NbdSource(NbdLocation(socket, "vda"))
    try:
        assert source.size == 16 * MiB
        assert source.has_data(1 * MiB, 2 * MiB) and source.has_data(0, 4 * MiB)
        assert not source.has_data(4 * MiB, 16 * MiB)
        data = _read_all(source)
        assert data[1 * MiB : 3 * MiB] == bytes([7]) * (2 * MiB)
        assert data[: 1 * MiB] == bytes(MiB) and data[3 * MiB :] == bytes(13 * MiB)
    finally:
        source.close()
    # 512 MiB read: buffers reused keep it to the interpreter and its modules (~110-190
    # MiB by host); a buffer kept per request would hold all 512 MiB
    assert _peak_rss_reading(socket, 32) < 320 * MiB
    dom.backups.abort()
    assert dom.backups.job_xml() is None
    assert not socket.exists()

    guest_write(raw, "virtio-disk0", 5, 9 * MiB, 1 * MiB)
    socket = _begin(dom, domain_factory.workdir, "cp2", since="cp1")
    with closing(NbdExport.connect(socket, "vda")) as export:
        assert export.extents(ALLOCATION, 0, export.size)[-1].offset < export.size
    source = NbdSource(NbdLocation(socket, "vda", dirty_bitmap("vda")))
    try:
        # both writes since cp1: 1 MiB (after cp1's instant) and 9 MiB
        assert source.changed_chunks(1 * MiB) == {1, 9}
        assert source.changed_chunks(4 * MiB) == {0, 2}
        data = _read_all(source)
        assert data[1 * MiB : 2 * MiB] == bytes([9]) * MiB
        assert data[9 * MiB : 10 * MiB] == bytes([5]) * MiB
    finally:
        source.close()
    dom.backups.abort()
    assert dom.backups.checkpoints() == ["cp1", "cp2"]
    dom.backups.delete_checkpoint("cp1")
    assert dom.backups.checkpoints() == ["cp2"]
    with pytest.raises(HypervisorError, match="cp1"):
        dom.backups.delete_checkpoint("cp1")
    dom.backups.abort()  # none runs: nothing to do
    dom.backups.delete_checkpoint("cp2")
    assert raw.isActive()
    assert not [p for p in os.listdir(domain_factory.workdir) if p.endswith(".scratch")]


def test_a_socket_nobody_serves_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NbdError, match="cannot read NBD export vda at"):
        NbdExport.connect(tmp_path / "none.sock", "vda")
