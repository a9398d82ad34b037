"""`virtbackup doctor` end to end on real domains and images (no guest boot).

The guest-side findings (agent answering, discard) are tested on the tiny guest in
tests/engine/test_trim_guest.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.cli import NO_HOST_CONFIG
from harness.libvirtd import DiskSpec, DomainFactory

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, "doctor", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,  # beyond the appliance's own bound (300 s): doctor must report it
    )


def findings_of(stdout: str, domain: str | None) -> dict[tuple[str, str | None], dict[str, Any]]:
    document = json.loads(stdout)
    return {
        (f["check"], f["disk"]): f
        for f in document["findings"]
        if f["domain"] == domain and f["check"] != "program"
    }


@pytest.mark.guestfs
def test_blockers_exit_1_and_every_finding_has_its_fix(
    domain_factory: DomainFactory, guestfs_works: None, tmp_path: Path
) -> None:
    old = domain_factory.workdir / "old.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(old), "16M"],
        check=True,
    )
    dom = domain_factory.create(
        [DiskSpec("qcow2", image=old), DiskSpec("chain", discard=True), DiskSpec("raw")],
        hint="doctor",
    )
    name = dom.name()
    gone = next(domain_factory.workdir.glob("doctor-disk2.raw"))
    gone.unlink()
    missing_dest = tmp_path / "nowhere"

    result = doctor(name, "--dest", str(missing_dest), "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["version"] == 1 and document["blockers"] >= 2
    host = findings_of(result.stdout, None)
    assert host[("guestfs", None)]["severity"] == "info"  # the appliance started
    assert host[("dest", None)]["severity"] == "blocker"
    assert str(missing_dest) in host[("dest", None)]["text"]
    assert host[("libvirt", None)]["severity"] == "info"

    found = findings_of(result.stdout, name)
    compat = found[("qcow2-compat", "vda")]
    assert compat["severity"] == "warning"
    assert compat["fix"] == f"with {name} shut off: qemu-img amend -f qcow2 -o compat=1.1 {old}"
    assert found[("discard", "vda")]["severity"] == "warning"
    assert found[("discard", "vdb")]["severity"] == "info"  # discard='unmap'
    chain = found[("backing-chain", "vdb")]
    assert chain["severity"] == "warning" and "qemu-img rebase" in chain["fix"]
    image = found[("image", "vdc")]
    assert image["severity"] == "blocker" and image["subject"] == "disk"
    assert found[("agent", None)]["severity"] == "warning"  # no channel
    assert "org.qemu.guest_agent.0" in found[("agent", None)]["fix"]
    # the hole-punching probe left nothing beside the images
    assert sorted(p.name for p in domain_factory.workdir.iterdir()) == sorted(
        ["old.qcow2", "doctor-disk1-base.raw", "doctor-disk1.qcow2"]
    )


def test_table_and_exit_0_without_blockers(domain_factory: DomainFactory, tmp_path: Path) -> None:
    dom = domain_factory.create([DiskSpec("raw", discard=True)], hint="fine")
    result = doctor(dom.name(), "--no-guestfs", "--dest", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 blockers" in result.stdout and "nothing blocks backups" in result.stdout
    assert dom.name() in result.stdout


def test_unknown_domain_is_a_usage_error() -> None:
    result = doctor("no-such-domain-here", "--no-guestfs")
    assert result.returncode == 2
    assert result.stderr.startswith("virtbackup: error: unknown domain")


def test_unreachable_libvirtd_is_a_blocker(tmp_path: Path) -> None:
    socket = tmp_path / "nothing.sock"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtbackup",
            *NO_HOST_CONFIG,
            "--connect",
            f"qemu:///system?socket={socket}",
            "doctor",
            "--no-guestfs",
            "--json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert result.returncode == 1, result.stderr
    libvirt = findings_of(result.stdout, None)[("libvirt", None)]
    assert libvirt["severity"] == "blocker" and "libvirtd" in libvirt["fix"]
