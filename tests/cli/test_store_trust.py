"""What the store trusts: retention counts only backups of the domain whose directory they
are in, not from the future and, where signatures are expected, signed; a backup is
written only into a DEST others cannot change. Each test plants what another user or a
copied disk would (a backup of another domain, an unsigned or far-future one, a foreign
domain directory, a world-writable DEST), runs the real CLI on real backups of real
libvirt domains and checks the decision, the exit code, the one line and the files."""

import json
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness.cli import virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory
from signing_helpers import SigningKey, make_signing_key

FUTURE = "20991231T000000Z"
NOBODY = 65534


def back_up(
    factory: DomainFactory, state_dir: Path, dest: Path, hint: str, key: SigningKey
) -> Path:
    """A signed backup made by the CLI of a new shut-off domain; its directory."""
    raw = build_fs_image(factory.workdir / f"{hint}.raw", content=2 * MiB, deleted=MiB)
    dom = factory.create([DiskSpec("raw", image=raw.path)], hint=hint)
    args = ("backup", dom.name(), "--dest", str(dest), "--sign-key", str(key.key), "--json")
    result = virtbackup_in(state_dir, *args)
    assert result.returncode == 0, result.stderr
    return Path(json.loads(result.stdout)["domains"][0]["backup"])


def plant(backup: Path, domain_dir: Path, stamp: str, *, signed: bool) -> Path:
    """A copy of `backup` as DEST/<domain_dir>/<stamp>, its signatures removed unless
    `signed`."""
    copy = domain_dir / stamp
    shutil.copytree(backup, copy)
    if not signed:
        for signature in copy.glob("*.sig"):
            signature.unlink()
    return copy


def prune_dry_run(state_dir: Path, config: Path, dest: Path, domain: str) -> dict[str, Any]:
    args = ("--config", str(config), "prune", "--dest", str(dest), domain)
    result = virtbackup_in(state_dir, *args, "--keep-last", "1", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    # the backups are in the repository (the default layout): gc's dry run follows
    document = json.loads(result.stdout)
    assert document["gc"]["dry_run"] is True, document
    (decision,) = document["retention"]
    assert isinstance(decision, dict)
    return decision


def listed(state_dir: Path, config: Path, dest: Path, domain: str) -> dict[str, Any]:
    args = ("--config", str(config), "backups", "--dest", str(dest), domain, "--json")
    result = virtbackup_in(state_dir, *args)
    assert result.returncode == 0, result.stderr
    return {entry["stamp"]: entry for entry in json.loads(result.stdout)["backups"]}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under `root`: owner, mode and (files) bytes."""
    found: dict[str, tuple[int, int, bytes | None]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            data = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
            found[str(path.relative_to(root))] = (info.st_uid, info.st_mode, data)
    return found


def signed_setup(tmp_path: Path) -> tuple[SigningKey, Path]:
    key = make_signing_key(tmp_path / "keys")
    config = tmp_path / "vb.toml"
    config.write_text(f'allowed_signers = "{key.allowed_signers}"\n')
    return key, config


def test_backup_of_another_domain_is_listed_as_such_and_left_alone(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    key, config = signed_setup(tmp_path)
    genuine = back_up(domain_factory, state_dir, dest, "one", key)
    other = back_up(domain_factory, state_dir, dest, "two", key)
    domain, domain_dir = genuine.parent.name, genuine.parent
    # another domain's backup, signatures intact, newer than this domain's only one
    plant(other, domain_dir, genuine.name + "-2", signed=True)
    decision = prune_dry_run(state_dir, config, dest, domain)
    assert decision["keep"] == [{"backup": genuine.name, "reasons": ["last 1/1"]}]
    assert decision["remove"] == []
    assert decision["unreadable_kept"] == [genuine.name + "-2"]
    problem = f"its manifest is of domain {other.parent.name!r}, not of {domain!r}"
    assert decision["problems"] == {genuine.name + "-2": problem}
    entries = listed(state_dir, config, dest, domain)
    assert entries[genuine.name + "-2"]["problem"] == problem
    assert entries[genuine.name]["problem"] is None

    # the finding's plant: unsigned, at a far-future stamp
    shutil.rmtree(domain_dir / (genuine.name + "-2"))
    plant(other, domain_dir, FUTURE, signed=False)
    decision = prune_dry_run(state_dir, config, dest, domain)
    assert decision["keep"] == [{"backup": genuine.name, "reasons": ["last 1/1"]}]
    assert decision["problems"] == {FUTURE: problem}
    table = virtbackup_in(
        state_dir, "--config", str(config), "backups", "--dest", str(dest), domain
    )
    assert table.returncode == 0, table.stderr
    assert "not counted: its manifest is of domain" in " ".join(table.stdout.split())


def test_backup_from_the_future_never_counts_as_the_newest(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    key, config = signed_setup(tmp_path)
    genuine = back_up(domain_factory, state_dir, dest, "one", key)
    domain, domain_dir = genuine.parent.name, genuine.parent
    # this domain's own signed backup, renamed to a far-future stamp
    plant(genuine, domain_dir, FUTURE, signed=True)
    decision = prune_dry_run(state_dir, config, dest, domain)
    assert decision["keep"] == [{"backup": genuine.name, "reasons": ["last 1/1"]}]
    assert decision["remove"] == []
    problem = "its time 2099-12-31 00:00:00 UTC is in the future"
    assert decision["problems"] == {FUTURE: problem}
    assert listed(state_dir, config, dest, domain)[FUTURE]["problem"] == problem


def test_unsigned_backup_fills_no_keep_slot_where_signatures_are_expected(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    key, config = signed_setup(tmp_path)
    genuine = back_up(domain_factory, state_dir, dest, "one", key)
    domain, domain_dir = genuine.parent.name, genuine.parent
    newer = genuine.name + "-2"  # the same second: not from the future
    older = "20000101T000000Z"
    plant(genuine, domain_dir, newer, signed=False)
    plant(genuine, domain_dir, older, signed=False)
    decision = prune_dry_run(state_dir, config, dest, domain)
    keep = {kept["backup"]: kept["reasons"] for kept in decision["keep"]}
    assert keep == {
        genuine.name: ["last 1/1"],
        newer: ["unsigned, no newer good backup"],
    }
    assert decision["remove"] == [older]
    assert decision["unreadable_kept"] == []

    # the prune itself removes exactly that one
    args = ("--config", str(config), "prune", "--dest", str(dest), domain, "--keep-last", "1")
    done = virtbackup_in(state_dir, *args)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in domain_dir.iterdir()) == sorted([genuine.name, newer])

    # without allowed_signers nothing is expected: the newest fills the slot
    plain = tmp_path / "plain.toml"
    plain.write_text("")
    decision = prune_dry_run(state_dir, plain, dest, domain)
    assert decision["keep"] == [{"backup": newer, "reasons": ["last 1/1"]}]
    assert decision["remove"] == [genuine.name]


def test_nightly_retention_keeps_its_signed_backup_over_a_newer_unsigned_one(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    """`all` with keep_last = 1: an unsigned backup planted a little in the future (within
    the margin) does not make the nightly run remove the backup it has just made."""
    key = make_signing_key(tmp_path / "keys")
    dom = domain_factory.create([DiskSpec("raw", size=2 * MiB)], hint="nightly")
    config = tmp_path / "vb.toml"
    config.write_text(
        f'dest = "{dest}"\ninclude = ["{dom.name()}"]\nsign_key = "{key.key}"\n'
        f'allowed_signers = "{key.allowed_signers}"\n[retention]\nkeep_last = 1\n'
    )
    first = virtbackup_in(state_dir, "--config", str(config), "all")
    assert first.returncode == 0, first.stderr
    (old,) = (dest / dom.name()).iterdir()
    soon = datetime.now(UTC) + timedelta(hours=2)
    planted = plant(old, old.parent, soon.strftime("%Y%m%dT%H%M%SZ"), signed=False)
    document = json.loads((planted / "manifest.json").read_text())
    document["started"] = document["finished"] = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    (planted / "manifest.json").write_text(json.dumps(document))

    second = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert second.returncode == 0, second.stderr
    (row,) = json.loads(second.stdout)["domains"]
    new = Path(row["backup"])
    assert row["pruned"] == [old.name]
    assert sorted(p.name for p in new.parent.iterdir()) == sorted([new.name, planted.name])


def test_backup_refuses_a_dest_others_can_write(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    dom = domain_factory.create([DiskSpec("raw", size=2 * MiB)], hint="openmode")
    os.chmod(dest, 0o777)
    before = snapshot(dest)
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest))
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr).endswith(
        f"backup destination {dest} is writable by group or others: "
        f"run 'chmod go-w {dest}', or 'chmod +t {dest}' to share it as /tmp is"
    )
    assert snapshot(dest) == before == {}


def test_backup_refuses_a_domain_directory_of_another_user(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    dom = domain_factory.create([DiskSpec("raw", size=2 * MiB)], hint="foreign")
    os.chmod(dest, 0o1777)  # shared like /tmp: anyone may create a domain directory
    planted = dest / dom.name()
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    os.chmod(planted, 0o777)
    before = snapshot(dest)
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest))
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr).endswith(
        f"{planted} is owned by uid {NOBODY}, not by us: "
        f"remove it, or run 'chown root {planted}' if what it holds is ours"
    )
    assert snapshot(dest) == before  # not chmodded, nothing written in it

    # once it is ours, the same command backs up into it
    os.chown(planted, 0, 0)
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(planted.stat().st_mode) == 0o700
    assert len([p for p in planted.iterdir() if not p.name.startswith(".")]) == 1
