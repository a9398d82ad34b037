"""`virtbackup backup` end to end: real domains, real images, restored and compared."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from harness.cli import virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory


def disk_sources(xml: str) -> list[str]:
    import xml.etree.ElementTree as ET

    return [s.get("file") or s.get("dev") or "" for s in ET.fromstring(xml).iter("source")]


def test_offline_domain_backs_up_and_restores_byte_for_byte(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    qcow2 = build_fs_image(domain_factory.workdir / "sys.qcow2", fmt="qcow2", content=4 * MiB)
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=2 * MiB, deleted=2 * MiB)
    dom = domain_factory.create(
        [DiskSpec("qcow2", image=qcow2.path), DiskSpec("raw", image=raw.path), DiskSpec("cdrom")],
        hint="offline",
    )
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    (row,) = summary["domains"]
    assert (row["result"], row["method"], row["disks"]) == ("ok", "offline", 2)
    backup = Path(row["backup"])
    assert backup.parent == dest / dom.name()
    assert sorted(p.name for p in backup.iterdir()) == [
        "domain.xml",
        "manifest.json",
        "vda.qcow2.idx",  # the default layout: each disk's chunks are in the repository
        "vdb.raw.idx",
    ]

    restored = tmp_path / "restored"
    result = virtbackup_in(state_dir, "restore", str(backup), "--to", str(restored))
    assert result.returncode == 0, result.stderr
    for original, name in ((qcow2.path, "vda.qcow2"), (raw.path, "vdb.raw")):
        subprocess.run(["cmp", str(original), str(restored / name)], check=True)
    # holes stay holes: the restored raw image takes no more room than the source
    assert os.stat(restored / "vdb.raw").st_blocks <= os.stat(raw.path).st_blocks


def test_running_domain_ends_running_on_its_own_images(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2"), DiskSpec("raw")], hint="live", start=True)
    before = dom.XMLDesc(0)
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert (row["result"], row["method"], row["message"]) == ("ok", "snapshot", "crash-consistent")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert disk_sources(dom.XMLDesc(0)) == disk_sources(before)
    assert not [p for p in domain_factory.workdir.iterdir() if "virtbackup" in p.name]
    assert "no guest agent" in result.stderr


def test_paused_domain_stays_paused(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path
) -> None:
    dom = domain_factory.create(hint="paused", start=True)
    dom.suspend()
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED


def test_one_failing_domain_does_not_stop_the_others(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    good = domain_factory.create(hint="good")
    broken = domain_factory.create([DiskSpec("raw")], hint="broken")
    (domain_factory.workdir / "broken-disk0.raw").unlink()  # its image is gone
    result = virtbackup_in(
        state_dir, "backup", broken.name(), good.name(), "--dest", str(dest), "--json"
    )
    assert result.returncode == 1
    rows = {r["domain"]: r for r in json.loads(result.stdout)["domains"]}
    assert rows[good.name()]["result"] == "ok"
    assert rows[broken.name()]["result"] == "failed"
    assert "broken-disk0.raw" in rows[broken.name()]["message"]
    assert not (dest / broken.name()).exists() or not list((dest / broken.name()).iterdir())


def test_bad_input_is_one_line(domain_factory: DomainFactory, state_dir: Path, dest: Path) -> None:
    dom = domain_factory.create(hint="input")
    unknown = virtbackup_in(state_dir, "backup", dom.name() + "x", "--dest", str(dest))
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("virtbackup: error: unknown domain")
    assert dom.name() in unknown.stderr  # the close match is suggested

    no_dest = virtbackup_in(state_dir, "--config", "/dev/null", "backup", dom.name())
    assert no_dest.returncode == 2
    assert "no backup destination" in no_dest.stderr

    missing = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest / "nope"))
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    assert "Traceback" not in unknown.stderr + no_dest.stderr + missing.stderr


def test_a_zero_bandwidth_limit_is_refused(state_dir: Path, dest: Path) -> None:
    """0 would silently mean "no limit": refused, with what to write instead; nothing
    is written and no domain is looked up."""
    for option, value, message in (
        ("--bwlimit", "0", "'0' is no rate (for no limit, leave the limit out)"),
        ("--remote-bwlimit", "0", """'0' means no limit to rclone: write "off" for that"""),
    ):
        result = virtbackup_in(
            state_dir, "backup", "nosuchdomain", "--dest", str(dest), option, value
        )
        assert result.returncode == 2
        assert f"Invalid value for '{option}': {message}" in result.stderr
        assert "Traceback" not in result.stderr
    assert list(dest.iterdir()) == []
