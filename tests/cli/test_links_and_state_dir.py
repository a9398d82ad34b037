"""Nothing virtbackup writes or deletes is reached through a symbolic link, and the state
directory (journals, locks) must be ours: each test plants what an attacker or an old
disk would (a link, a FIFO, a bad mode, a forged journal), runs the real CLI and checks
the refusal, the exit code, the one-line message and that nothing outside changed."""

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import MiB, disk_of, make_backup
from harness.cli import virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory

RUN_ID = "20240101T000000Z-abcdef"


def tree(root: Path) -> dict[str, tuple[str, bytes | str | int]]:
    """Every entry under `root`, links not followed: kind and bytes, link target or mode."""
    found: dict[str, tuple[str, bytes | str | int]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                found[key] = ("file", path.read_bytes())
            else:
                found[key] = ("other", stat.S_IMODE(info.st_mode) | stat.S_IFMT(info.st_mode))
    return found


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def outside(tmp_path: Path) -> Path:
    """A directory with a decoy file that no command of a test may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "decoy").write_bytes(b"precious\n")
    return path


def small_backup(dest: Path, tmp_path: Path, domain: str = "web1") -> Path:
    image = tmp_path / f"{domain}-{len(list(tmp_path.iterdir()))}.raw"
    image.write_bytes(os.urandom(1 * MiB))
    return make_backup(dest, [disk_of(image)], domain=domain).path


# -- verify: verified.json ---------------------------------------------------------------


def test_verify_replaces_a_planted_temporary_link_instead_of_writing_through_it(
    tmp_path: Path, state_dir: Path
) -> None:
    backup = small_backup(tmp_path / "dest", tmp_path)
    decoys = outside(tmp_path)
    before = tree(decoys)
    (backup / ".verified.json.tmp").symlink_to(decoys / "decoy")
    result = virtbackup_in(state_dir, "verify", str(backup))
    assert result.returncode == 0, result.stderr
    assert tree(decoys) == before
    assert not os.path.lexists(backup / ".verified.json.tmp")
    record = backup / "verified.json"
    assert stat.S_ISREG(record.lstat().st_mode)
    assert json.loads(record.read_text())["ok"] is True


# -- prune and clean --dest: removal never leaves DEST ------------------------------------


def test_prune_skips_a_domain_directory_linked_out_of_dest(
    tmp_path: Path, state_dir: Path, dest: Path
) -> None:
    decoys = outside(tmp_path)
    for _ in range(2):
        small_backup(decoys, tmp_path)  # outside/web1/<stamp> twice
        small_backup(dest, tmp_path, domain="real")
    (dest / "web1").symlink_to(decoys / "web1")
    before = tree(decoys)
    result = virtbackup_in(state_dir, "prune", "--dest", str(dest), "--keep-last", "1")
    assert result.returncode == 0, result.stderr
    assert f"{dest / 'web1'} is a symbolic link: skipped" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree(decoys) == before
    assert len([p for p in (dest / "real").iterdir()]) == 1  # the real domain was pruned


def test_prune_skips_a_backup_directory_that_is_a_link(
    tmp_path: Path, state_dir: Path, dest: Path
) -> None:
    decoys = outside(tmp_path)
    foreign = small_backup(decoys, tmp_path)  # outside/web1/<stamp>
    small_backup(dest, tmp_path)  # a newer real backup of web1
    (dest / "web1" / "20000101T000000Z").symlink_to(foreign)
    before = tree(decoys)
    result = virtbackup_in(state_dir, "prune", "--dest", str(dest), "--keep-last", "1")
    assert result.returncode == 0, result.stderr  # not a backup of DEST: skipped, not pruned
    assert "20000101T000000Z is a symbolic link: skipped" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree(decoys) == before
    assert os.path.islink(dest / "web1" / "20000101T000000Z")


def test_clean_dest_removes_partials_only_in_dest_itself(
    tmp_path: Path, state_dir: Path, dest: Path
) -> None:
    decoys = outside(tmp_path)
    for where in (decoys / "web1", decoys / "loose"):
        (where / ".20240101T000000Z.partial").mkdir(parents=True)
        (where / ".20240101T000000Z.partial" / "vda.raw.lz4").write_bytes(b"data")
    (dest / "web1").symlink_to(decoys / "web1")  # a linked domain directory
    (dest / "web2").mkdir()
    (dest / "web2" / ".20240101T000000Z.partial").symlink_to(decoys / "loose")  # a linked partial
    ours = dest / "web3" / ".20240101T000000Z.partial"
    ours.mkdir(parents=True)  # a real leftover: the control
    before = tree(decoys)
    dry = virtbackup_in(state_dir, "clean", "--dry-run", "--dest", str(dest))
    assert dry.returncode == 0, dry.stderr
    assert str(ours) in dry.stdout and str(decoys) not in dry.stdout
    result = virtbackup_in(state_dir, "clean", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    assert f"removed partial backup {ours}" in result.stdout
    assert not ours.exists()
    assert tree(decoys) == before
    assert os.path.islink(dest / "web2" / ".20240101T000000Z.partial")


# -- the state directory ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "owner", "fix"),
    [
        (0o777, None, "run 'chmod 0700 {state}'"),
        (0o720, None, "run 'chmod 0700 {state}'"),
        (0o700, 65534, "run 'chown root {state}' or choose another state directory"),
    ],
)
def test_a_state_directory_others_can_change_is_refused(
    tmp_path: Path, mode: int, owner: int | None, fix: str
) -> None:
    state = tmp_path / "state"
    (state / "locks").mkdir(parents=True)
    os.chmod(state, mode)
    if owner is not None:
        os.chown(state, owner, -1)
    before = tree(state)
    result = virtbackup_in(state, "clean")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"state directory {state} " in line
    assert line.endswith(fix.format(state=state))
    assert tree(state) == before


def test_a_directory_above_writable_by_others_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    result = virtbackup_in(shared / "state", "clean")
    assert result.returncode == 2
    assert one_line(result.stderr).endswith(
        f"{shared}, above the state directory, is writable by group or others: "
        f"run 'chmod go-w {shared}' or choose another state directory"
    )
    assert list(shared.iterdir()) == []
    os.chmod(shared, 0o1777)  # like /tmp: nobody else can replace our directory there
    result = virtbackup_in(shared / "state", "clean")
    assert result.returncode == 0, result.stderr
    for made in (shared / "state", shared / "state" / "locks"):
        info = made.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()


def test_a_planted_lock_link_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "locks").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    decoys = outside(tmp_path)
    (state / "locks" / "lvm-snapshots.lock").symlink_to(decoys / "decoy")
    before = tree(decoys)
    result = virtbackup_in(state, "clean")
    assert result.returncode == 2
    assert one_line(result.stderr).endswith(
        f"{state / 'locks' / 'lvm-snapshots.lock'} is a symbolic link: "
        "remove it: virtbackup makes its own"
    )
    assert tree(decoys) == before


def test_a_lock_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "locks").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    os.mkfifo(state / "locks" / "lvm-snapshots.lock")
    result = virtbackup_in(state, "clean", timeout=60)
    assert result.returncode == 2
    assert one_line(result.stderr).endswith("lvm-snapshots.lock is not a regular file: remove it")


def test_a_journal_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "journal").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    os.chmod(state / "journal", 0o777)
    (state / "journal" / f"uu.{RUN_ID}.json").write_text("{}")
    before = tree(state)
    result = virtbackup_in(state, "clean")
    assert result.returncode == 2
    assert one_line(result.stderr).endswith(f"run 'chmod 0700 {state / 'journal'}'")
    assert tree(state) == before


def test_a_journal_that_is_a_fifo_or_a_link_is_reported_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journals = state / "journal"
    journals.mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    os.mkfifo(journals / f"aa.{RUN_ID}.json")
    decoys = outside(tmp_path)
    (journals / f"bb.{RUN_ID}.json").symlink_to(decoys / "decoy")
    result = virtbackup_in(state, "clean", timeout=60)
    assert result.returncode == 1
    assert f"aa.{RUN_ID}.json is not a regular file" in result.stderr
    assert f"bb.{RUN_ID}.json is a symbolic link" in result.stderr
    assert stat.S_ISFIFO((journals / f"aa.{RUN_ID}.json").lstat().st_mode)
    assert os.path.islink(journals / f"bb.{RUN_ID}.json")


# -- clean acts only on what our runs create ----------------------------------------------


def journal(uuid: str, name: str, overlays: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "format": "virtbackup-journal",
        "version": 1,
        "run_id": RUN_ID,
        "pid": 1,
        "created": "2024-01-01T00:00:00Z",
        "uri": "qemu:///system",
        "domain": {"uuid": uuid, "name": name},
        "records": [
            {
                "id": number,
                "kind": "overlay",
                "target": "vda",
                "original": original,
                "original_type": "file",
                "original_format": "qcow2",
                "overlay": overlay,
            }
            for number, (original, overlay) in enumerate(overlays, 1)
        ],
    }


@pytest.mark.libvirt
def test_clean_deletes_only_overlays_named_and_placed_as_ours(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], hint="forged")
    image = domain_factory.workdir / "forged-disk0.qcow2"
    uuid = dom.UUIDString()
    decoys = outside(tmp_path)
    state = tmp_path / "state"
    journals = state / "journal"
    journals.mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    forged = journals / f"{uuid}.{RUN_ID}.json"
    forged.write_text(json.dumps(journal(uuid, dom.name(), [(str(image), str(decoys / "decoy"))])))
    before = tree(decoys)
    result = virtbackup_in(state, "clean")
    assert result.returncode == 1
    assert f"journal {forged} is not one of ours: overlay '{decoys / 'decoy'}' is not named" in (
        result.stderr
    )
    assert tree(decoys) == before
    assert forged.exists()  # kept for a human to look at
    # The control: the overlay a run of ours would have made next to the image goes.
    overlay = Path(f"{image}.virtbackup-{RUN_ID}.qcow2")
    overlay.write_bytes(b"left by a dead run")
    forged.write_text(json.dumps(journal(uuid, dom.name(), [(str(image), str(overlay))])))
    result = virtbackup_in(state, "clean")
    assert result.returncode == 0, result.stderr
    assert f"delete overlay {overlay}" in result.stdout
    assert not overlay.exists() and not forged.exists()
    assert image.exists()
    # An overlay name of ours that is a link: neither it nor its target is touched.
    overlay.symlink_to(decoys / "decoy")
    forged.write_text(json.dumps(journal(uuid, dom.name(), [(str(image), str(overlay))])))
    result = virtbackup_in(state, "clean")
    assert result.returncode == 1
    assert f"{overlay} is not a regular file: left alone" in result.stderr
    assert os.path.islink(overlay) and tree(decoys) == before


# -- a hidden domain name ---------------------------------------------------------------


@pytest.mark.libvirt
def test_a_domain_named_with_a_leading_dot_is_backed_up_and_listed(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    name = "." + domain_factory.name("hidden")
    domain_factory.create([DiskSpec("raw", size=2 * MiB)], name=name)
    result = virtbackup_in(state_dir, "backup", name, "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    (stamp,) = [p for p in (dest / name).iterdir()]
    assert json.loads((stamp / "manifest.json").read_text())["domain"]["name"] == name
    listed = virtbackup_in(state_dir, "backups", "--dest", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [b["domain"] for b in json.loads(listed.stdout)["backups"]] == [name]


# -- all: the summary file ----------------------------------------------------------------


@pytest.mark.libvirt
def test_all_replaces_a_planted_summary_temporary_link(
    tmp_path: Path, state_dir: Path, dest: Path
) -> None:
    decoys = outside(tmp_path)
    (dest / ".virtbackup-last-run.json.tmp").symlink_to(decoys / "decoy")
    before = tree(decoys)
    result = virtbackup_in(state_dir, "all", "--dest", str(dest), "--include", "vbtest-none-*")
    assert result.returncode == 0, result.stderr
    assert tree(decoys) == before
    summary = dest / "virtbackup-last-run.json"
    assert stat.S_ISREG(summary.lstat().st_mode)
    assert json.loads(summary.read_text())
    assert (dest / ".virtbackup-last-run.json.tmp").readlink() == decoys / "decoy"  # left alone


@pytest.mark.libvirt
def test_backup_refuses_a_bad_state_directory_before_it_starts_and_a_planted_lock_link(
    domain_factory: DomainFactory, tmp_path: Path, dest: Path
) -> None:
    dom = domain_factory.create([DiskSpec("raw", size=2 * MiB)], hint="locked")
    state = tmp_path / "state"
    (state / "locks").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o777)
    result = virtbackup_in(state, "backup", dom.name(), "--dest", str(dest))
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr).endswith(f"run 'chmod 0700 {state}'")
    assert list(dest.iterdir()) == []
    os.chmod(state, 0o700)
    decoys = outside(tmp_path)
    lock = state / "locks" / f"domain-{dom.UUIDString()}.lock"
    lock.symlink_to(decoys / "decoy")
    before = tree(decoys)
    result = virtbackup_in(state, "backup", dom.name(), "--dest", str(dest), "--json")
    assert result.returncode == 1, result.stderr  # this domain fails, others would go on
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "failed"
    assert row["message"] == f"{lock} is a symbolic link: remove it: virtbackup makes its own"
    assert tree(decoys) == before
    written = [p.relative_to(dest) for p in dest.rglob("*") if p.is_file()]
    assert written == [Path(".virtbackup-runs", f"{dom.name()}.json")]  # the failure, recorded
