"""Encrypted backups through the CLI: --encrypt / `encrypt` in the config, restore and
verify with --identity, and the one-line errors for a missing or wrong key."""

import json
import subprocess
from pathlib import Path
from typing import Any

from age_helpers import make_key_pair
from harness.cli import virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory


def test_encrypted_stream_backup_restore_verify(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=2 * MiB, deleted=MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="enc")
    result = virtbackup_in(
        state_dir,
        "backup",
        dom.name(),
        "--dest",
        str(dest),
        "--encrypt",
        str(keys.recipients),
        "--layout",
        "stream",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    backup = Path(json.loads(result.stdout)["domains"][0]["backup"])
    assert (backup / "vda.raw.lz4.age").is_file() and not (backup / "domain.xml").exists()

    listed = virtbackup_in(state_dir, "backups", "--dest", str(dest), "--json")
    (entry,) = json.loads(listed.stdout)["backups"]
    assert (entry["encrypted"], entry["method"], entry["disks"]) == (True, "offline", [])

    out = tmp_path / "out"
    missing = virtbackup_in(state_dir, "restore", str(backup), "--to", str(out))
    assert missing.returncode == 2
    fingerprint = json.loads((backup / "manifest.json").read_text())["encryption"]["recipients"]
    assert missing.stderr.strip().splitlines() == [
        f"virtbackup: error: backup {backup} is encrypted: give --identity FILE "
        f"(an age identity of one of its recipients: {fingerprint[0]})"
    ]
    stranger = make_key_pair(tmp_path / "stranger")
    wrong = virtbackup_in(
        state_dir, "restore", str(backup), "--to", str(out), "-i", str(stranger.identity)
    )
    assert wrong.returncode == 2
    assert "no key in identity file" in wrong.stderr and len(wrong.stderr.splitlines()) == 1

    done = virtbackup_in(
        state_dir, "restore", str(backup), "--to", str(out), "-i", str(keys.identity)
    )
    assert done.returncode == 0, done.stderr
    subprocess.run(["cmp", str(raw.path), str(out / "vda.raw")], check=True)

    verified = virtbackup_in(state_dir, "verify", str(backup), "--identity", str(keys.identity))
    assert verified.returncode == 0 and verified.stdout.startswith("ok\t")
    refused = virtbackup_in(state_dir, "verify", str(backup), "-i", str(stranger.identity))
    assert refused.returncode == 2 and "no key in identity file" in refused.stderr
    assert fingerprint[0] in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_config_encrypt_and_a_bad_recipients_file(
    domain_factory: DomainFactory, libvirt: Any, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    dom = domain_factory.create([DiskSpec("qcow2")], hint="encall", start=True)
    config = tmp_path / "virtbackup.toml"
    config.write_text(
        f'dest = "{dest}"\nencrypt = "{keys.recipients}"\ninclude = ["{dom.name()}"]\n'
    )
    result = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert result.returncode == 0, result.stderr
    backup = Path(json.loads(result.stdout)["domains"][0]["backup"])
    assert sorted(p.name for p in backup.iterdir()) == [
        "domain.xml.age",
        "manifest.json",
        "manifest.json.age",
        "vda.raw.idx",  # repository, keyed names; backup-api serves the guest view (raw)
    ]
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa nonsense\n")
    refused = virtbackup_in(
        state_dir, "backup", dom.name(), "--dest", str(dest), "--encrypt", str(bad)
    )
    assert refused.returncode == 2
    assert "age cannot encrypt to" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert len(list((dest / dom.name()).iterdir())) == 1  # nothing new was started
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
