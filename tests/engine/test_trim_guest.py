"""`backup --trim` and `doctor` on the tiny real guest, through the command line.

The guest mounts its data disk without `-o discard`: deleted blocks are only released
by the fstrim that --trim asks for, so the host image shrinking proves the trim did it.
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from harness.cli import virtbackup_in
from harness.guest import GUEST_MOUNT, TinyGuestFactory

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

MiB = 1024 * 1024
JUNK = 20  # MiB of random data written and deleted in the guest


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def backup_row(state_dir: Path, name: str, dest: Path, *options: str) -> dict[str, Any]:
    dest.mkdir(exist_ok=True)
    result = virtbackup_in(state_dir, "backup", name, "--dest", str(dest), "--json", *options)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return dict(row)


def doctor_findings(state_dir: Path, name: str) -> tuple[int, list[dict[str, Any]]]:
    result = virtbackup_in(state_dir, "doctor", name, "--no-guestfs", "--json")
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    return result.returncode, [f for f in document["findings"] if f["domain"] == name]


def only(findings: list[dict[str, Any]], check: str) -> dict[str, Any]:
    (finding,) = [f for f in findings if f["check"] == check]
    return finding


def write_and_delete(guest: Any) -> None:
    code, out = guest.exec(
        f"dd if=/dev/urandom of={GUEST_MOUNT}/junk bs=1M count={JUNK} 2>&1 && sync "
        f"&& rm {GUEST_MOUNT}/junk && sync",
        timeout=300,
    )
    assert code == 0, out


def test_trim_frees_deleted_data_in_the_image_and_shrinks_the_backup(
    tiny_guest: TinyGuestFactory, libvirt: Any, tmp_path: Path
) -> None:
    guest = tiny_guest("qcow2", discard=True, hint="trim")
    name = guest.dom.name()
    state_dir = tmp_path / "state"
    write_and_delete(guest)
    before = allocated(guest.disk)
    assert before > JUNK * MiB

    code, findings = doctor_findings(state_dir, name)
    assert code == 0, findings
    assert only(findings, "discard")["severity"] == "info"
    assert only(findings, "agent")["severity"] == "info"  # answering

    untrimmed = backup_row(state_dir, name, tmp_path / "plain")
    assert untrimmed["trim_reclaimed"] is None
    trimmed = backup_row(state_dir, name, tmp_path / "trimmed", "--trim")

    after = allocated(guest.disk)
    assert before - after >= (JUNK - 4) * MiB, (before, after)
    assert trimmed["trim_reclaimed"] >= (JUNK - 4) * MiB
    assert not trimmed["warnings"]
    # Random data does not compress: the deleted junk was most of the first backup.
    assert trimmed["stored"] <= untrimmed["stored"] - (JUNK - 4) * MiB, (trimmed, untrimmed)
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert guest.agent("guest-fsfreeze-status") == "thawed"


def test_disk_without_discard_gets_the_doctor_finding_and_the_trim_is_skipped(
    tiny_guest: TinyGuestFactory, libvirt: Any, tmp_path: Path
) -> None:
    guest = tiny_guest("raw", discard=False, hint="nodiscard")
    name = guest.dom.name()
    state_dir = tmp_path / "state"

    code, findings = doctor_findings(state_dir, name)
    assert code == 0, findings  # costs space, blocks nothing
    discard = only(findings, "discard")
    assert (discard["severity"], discard["subject"], discard["disk"]) == ("warning", "disk", "vda")
    assert f"virsh edit {name}" in discard["fix"]
    assert "<driver name='qemu' type='raw' discard='unmap'/>" in discard["fix"]

    write_and_delete(guest)
    before = allocated(guest.disk)
    row = backup_row(state_dir, name, tmp_path / "dest", "--trim")
    assert row["trim_reclaimed"] is None
    (warning,) = row["warnings"]
    assert warning.startswith("trim skipped: vda of") and "discard='unmap'" in warning
    assert allocated(guest.disk) == before  # nothing was asked of the guest
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
