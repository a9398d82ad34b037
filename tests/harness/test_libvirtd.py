"""The libvirt fixtures work against the real daemon and always clean up."""

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.libvirtd import DiskSpec, DomainFactory

ALL_KINDS = ["qcow2", "raw", "block", "cdrom", "empty-cdrom", "chain"]


def test_daemon_answers(libvirt_conn: Any) -> None:
    assert libvirt_conn.getLibVersion() >= 9_000_000
    assert libvirt_conn.getURI() == "qemu:///system"


def test_domain_with_every_disk_kind_runs(domain_factory: DomainFactory, libvirt: Any) -> None:
    dom = domain_factory.create([DiskSpec(kind) for kind in ALL_KINDS], start=True)
    state, _reason = dom.state()
    assert state == libvirt.VIR_DOMAIN_RUNNING
    xml = dom.XMLDesc(0)
    assert "type='qemu'" in xml
    assert "<source dev='/dev/loop" in xml
    assert xml.count("device='cdrom'") == 2
    # libvirt sees the backing file of the chain disk
    assert "dom-disk5-base.raw" in xml


def test_paused_and_transient(domain_factory: DomainFactory, libvirt: Any) -> None:
    paused = domain_factory.create(hint="paused", start=True)
    paused.suspend()
    assert paused.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    transient = domain_factory.create(hint="transient", transient=True)
    assert transient.isActive() and not transient.isPersistent()


def test_cleanup_removes_domains_files_and_loops(libvirt_conn: Any, libvirt: Any) -> None:
    factory = DomainFactory(libvirt_conn, libvirt)
    try:
        running = factory.create([DiskSpec("qcow2"), DiskSpec("block")], hint="a", start=True)
        stopped = factory.create(hint="b")
        running.snapshotCreateXML(
            "<domainsnapshot><name>s</name><memory snapshot='no'/>"
            "<disks><disk name='vdb' snapshot='no'/></disks></domainsnapshot>",
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA,
        )
        names = [running.name(), stopped.name()]
        loops = list(factory._loops)
    finally:
        factory.cleanup()
    defined = {d.name() for d in libvirt_conn.listAllDomains(0)}
    assert not defined & set(names)
    assert not factory.workdir.exists()
    attached = subprocess.run(["losetup", "-a"], check=False, capture_output=True, text=True).stdout
    assert all(f"{dev}:" not in attached for dev in loops)


def test_cleanup_runs_when_the_test_fails(libvirt_conn: Any, libvirt: Any) -> None:
    factory = DomainFactory(libvirt_conn, libvirt)
    with pytest.raises(RuntimeError):
        try:
            factory.create(hint="failing", start=True)
            raise RuntimeError("the test body failed")
        finally:
            factory.cleanup()
    assert factory.name("failing") not in {d.name() for d in libvirt_conn.listAllDomains(0)}


def test_workdir_is_reachable_by_qemu(domain_factory: DomainFactory) -> None:
    # qemu runs as libvirt-qemu: every parent must be traversable by others.
    for path in [domain_factory.workdir, *domain_factory.workdir.parents]:
        assert os.stat(path).st_mode & 0o001, path
    assert isinstance(domain_factory.workdir, Path)
