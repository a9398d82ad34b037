"""What the consistency tests compare: a domain's disk chains, state and leftovers."""

import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.diskxml import parse_disks
from virtbackup.core.model import Method
from virtbackup.core.planning import DomainPlan, PlanOptions, plan_domain

MiB = 1024 * 1024


def chains(xml: str) -> list[tuple[str, str, str | None, str | None, tuple[str, ...]]]:
    """Each disk as (target, type, source, format, backing chain): what must come back
    exactly (libvirt's index attributes may change and do not matter)."""
    return [(d.target, d.source_type, d.path, d.format, d.backing_chain) for d in parse_disks(xml)]


def snapshot_of(libvirt: Any, dom: Any) -> dict[str, Any]:
    """Live chains, defined chains and run state of a domain."""
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if dom.isPersistent() else ""
    return {
        "live": chains(dom.XMLDesc(0)) if dom.isActive() else None,
        "config": chains(inactive) if inactive else None,
        "state": dom.state()[0],
    }


def overlays_in(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.glob("*.virtbackup-*"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def hmp(dom: Any, command: str) -> str:
    """A human monitor command in the domain's qemu (qemu-io writes like a guest would)."""
    import libvirt_qemu

    return str(
        libvirt_qemu.qemuMonitorCommand(
            dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        )
    )


def guest_write(dom: Any, device: str, pattern: int, offset: int, length: int) -> None:
    """Write `length` bytes of `pattern` at `offset` of the disk with qdev id `device`,
    through the disk's active layer, as the guest would."""
    backend = f"/machine/peripheral/{device}/virtio-backend"
    out = hmp(dom, f'qemu-io -d {backend} "write -P {pattern} {offset} {length}"')
    assert "rror" not in out, out  # qemu-io prints its own output on qemu's stdout


def read_raw(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def qemu_img_check(path: Path) -> None:
    subprocess.run(["qemu-img", "check", "-q", str(path)], check=True)


def planned(
    hypervisor: Hypervisor, name: str, method: Method, targets: Sequence[str]
) -> DomainPlan:
    """The plan `backup --method METHOD` makes for the domain `name` as it is now, with
    every disk but `targets` left out by configuration."""
    facts = hypervisor.facts(hypervisor.domain(name))
    others = tuple(d.target for d in facts.disks if d.target not in targets)
    return plan_domain(facts, PlanOptions(method=method, exclude_disks=others))
