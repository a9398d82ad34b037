"""The repository layout, the default of `backup` and `all`, end to end: real domains,
restored and verified through the existing commands, side by side with stream backups."""

import json
import os
import subprocess
import time
from pathlib import Path

from age_helpers import make_key_pair
from harness.cli import virtbackup, virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.core.repository_format import REPOSITORY_DIR


def _backup(state_dir: Path, dest: Path, *args: str) -> dict[str, object]:
    result = virtbackup_in(state_dir, "backup", *args, "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return dict(row)


def test_repository_backup_restores_verifies_and_lives_beside_streams(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    qcow2 = build_fs_image(domain_factory.workdir / "sys.qcow2", fmt="qcow2", content=4 * MiB)
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=2 * MiB, deleted=2 * MiB)
    dom = domain_factory.create(
        [DiskSpec("qcow2", image=qcow2.path), DiskSpec("raw", image=raw.path)], hint="repo"
    )
    stream = Path(str(_backup(state_dir, dest, dom.name(), "--layout", "stream")["backup"]))
    time.sleep(1.1)  # a new stamp
    first = Path(str(_backup(state_dir, dest, dom.name())["backup"]))  # the default layout
    assert sorted(p.name for p in first.iterdir()) == [
        "domain.xml",
        "manifest.json",
        "vda.qcow2.idx",
        "vdb.raw.idx",
    ]
    assert sorted(p.name for p in stream.iterdir()) == [
        "domain.xml",
        "manifest.json",
        "vda.qcow2.lz4",
        "vdb.raw.lz4",
    ]
    chunks = dest / REPOSITORY_DIR / "chunks"
    stored = sorted(chunks.rglob("*"))
    time.sleep(1.1)
    second = Path(str(_backup(state_dir, dest, dom.name(), "--layout", "repository")["backup"]))
    assert sorted(chunks.rglob("*")) == stored  # nothing changed, nothing added
    manifest = json.loads((second / "manifest.json").read_text())
    assert [d["stored_size"] for d in manifest["disks"]] == [
        (second / d["file"]).stat().st_size for d in manifest["disks"]
    ]

    listed = virtbackup_in(state_dir, "backups", dom.name(), "--dest", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["backups"]) == 3
    for backup in (stream, first, second):
        verified = virtbackup_in(state_dir, "verify", str(backup))
        assert verified.returncode == 0, verified.stderr
        restored = tmp_path / backup.name
        result = virtbackup_in(state_dir, "restore", str(backup), "--to", str(restored))
        assert result.returncode == 0, result.stderr
        for original, name in ((qcow2.path, "vda.qcow2"), (raw.path, "vdb.raw")):
            subprocess.run(["cmp", str(original), str(restored / name)], check=True)
        assert os.stat(restored / "vdb.raw").st_blocks <= os.stat(raw.path).st_blocks * 1.01

    # a damaged chunk: restore and verify fail with one line naming it and the backup
    index = (second / "vdb.raw.idx").read_text().split()
    damaged = next(chunks / line for line in index if index.count(line) == 1)
    damaged.write_bytes(damaged.read_bytes()[:-7])
    for command in (["verify", str(second)], ["restore", str(second), "--to", str(tmp_path / "x")]):
        result = virtbackup_in(state_dir, *command)
        assert result.returncode == 1, result.stdout + result.stderr
        line = (result.stdout + result.stderr).strip().splitlines()[-1]
        assert damaged.name in line and str(second) in line, line
        assert "Traceback" not in result.stderr

    # clean never touches the repository
    cleaned = virtbackup_in(state_dir, "clean", "--dest", str(dest))
    assert cleaned.returncode == 0, cleaned.stderr
    assert sorted(chunks.rglob("*")) == stored


def _files(row: dict[str, object]) -> list[str]:
    return sorted(p.name for p in Path(str(row["backup"])).iterdir())


def test_the_default_layout_is_the_repository_encrypted_or_not(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    """No layout given: the repository, with --encrypt (or `encrypt`) too, its index beside
    a sealed manifest; `layout = "stream"` in the file keeps streams. Runs with a remote
    too (tests/cli/test_offsite_repository.py), except --remote-only."""
    dom = domain_factory.create([DiskSpec("raw")], hint="default")
    assert _files(_backup(state_dir, dest, dom.name()))[-1] == "vda.raw.idx"
    keys = make_key_pair(tmp_path / "keys")
    time.sleep(1.1)
    encrypted = _files(_backup(state_dir, dest, dom.name(), "--encrypt", str(keys.recipients)))
    assert "vda.raw.idx" in encrypted and "manifest.json.age" in encrypted
    config = tmp_path / "virtbackup.toml"
    for text, expected in (
        (f'encrypt = "{keys.recipients}"\n', "vda.raw.idx"),
        ('layout = "stream"\n', "vda.raw.lz4"),
    ):
        config.write_text(f'dest = "{dest}"\n{text}')
        time.sleep(1.1)
        result = virtbackup_in(state_dir, "--config", str(config), "backup", dom.name(), "--json")
        assert result.returncode == 0, result.stderr
        (row,) = json.loads(result.stdout)["domains"]
        assert expected in _files(row), text
    listed = virtbackup_in(state_dir, "backups", dom.name(), "--dest", str(dest), "--json")
    assert len(json.loads(listed.stdout)["backups"]) == 4


def test_a_history_of_both_layouts_is_listed_pruned_and_restored(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    """A host upgraded to the repository default: its domain's older stream backups stay,
    and retention counts both kinds as one history; gc frees the chunks only the removed
    repository backup used; what is left restores and exports, whatever its kind."""
    image = build_fs_image(domain_factory.workdir / "mixed.raw", content=2 * MiB).path
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="mixed")
    config = tmp_path / "virtbackup.toml"
    config.write_text(f'dest = "{dest}"\ngc_grace = 0\n')
    history = []  # (backup, the image as it was backed up)
    for layout in ("stream", "repository", "stream", "repository"):
        with open(image, "r+b") as disk:  # the chunk at 16 MiB is new each time
            disk.seek(16 * MiB)
            disk.write(os.urandom(4 * MiB))
        args = ["--layout", "stream"] if layout == "stream" else []
        backup = Path(str(_backup(state_dir, dest, dom.name(), *args)["backup"]))
        copy = tmp_path / f"image-{len(history)}.raw"
        subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
        history.append((backup, copy))
        time.sleep(1.1)  # a new stamp
    assert [(b / "vda.raw.lz4").exists() for b, _ in history] == [True, False, True, False]
    chunks = dest / REPOSITORY_DIR / "chunks"
    only_first = set((history[1][0] / "vda.raw.idx").read_text().split()) - set(
        (history[3][0] / "vda.raw.idx").read_text().split()
    )
    assert len(only_first) == 1  # the chunk at 16 MiB as the second backup saw it

    listed = virtbackup_in(state_dir, "backups", dom.name(), "--dest", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["backups"]
    assert sorted(row["stamp"] for row in rows) == [backup.name for backup, _ in history]
    for backup, _ in history:
        verified = virtbackup_in(state_dir, "verify", str(backup))
        assert verified.returncode == 0, verified.stderr

    # keep the newest two: the oldest of each kind goes, and gc frees what only it used
    pruned = virtbackup_in(
        state_dir, "--config", str(config), "prune", dom.name(), "--keep-last", "2", "--json"
    )
    assert pruned.returncode == 0, pruned.stderr
    document = json.loads(pruned.stdout)
    (decision,) = document["retention"]
    assert sorted(decision["remove"]) == [history[0][0].name, history[1][0].name]
    assert document["gc"]["removed_chunks"] == len(only_first)
    assert not any((chunks / name).exists() for name in only_first)
    left = sorted(p.name for p in (dest / dom.name()).iterdir())
    assert left == [history[2][0].name, history[3][0].name]
    for backup, copy in history[2:]:
        restored = tmp_path / f"restored-{backup.name}"
        result = virtbackup_in(state_dir, "restore", str(backup), "--to", str(restored))
        assert result.returncode == 0, result.stderr
        subprocess.run(["cmp", str(copy), str(restored / "vda.raw")], check=True)
        # and each exports as a stream that stock lz4 restores
        exported = tmp_path / f"exported-{backup.name}"
        result = virtbackup_in(state_dir, "export", str(backup), "--to", str(exported))
        assert result.returncode == 0, result.stderr
        stream = exported / dom.name() / backup.name / "vda.raw.lz4"
        decoded = tmp_path / f"decoded-{backup.name}.raw"
        subprocess.run(["lz4", "-d", "-q", str(stream), str(decoded)], check=True)
        subprocess.run(["cmp", str(copy), str(decoded)], check=True)


def test_layout_from_the_configuration_and_what_it_cannot_do_yet(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], hint="repocfg")
    config = tmp_path / "virtbackup.toml"
    config.write_text(f'dest = "{dest}"\nlayout = "repository"\n')
    result = virtbackup_in(state_dir, "--config", str(config), "backup", dom.name(), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert sorted(p.name for p in Path(row["backup"]).iterdir())[-1] == "vda.raw.idx"
    # the command line wins over the file
    time.sleep(1.1)
    result = virtbackup_in(
        state_dir, "--config", str(config), "backup", dom.name(), "--layout", "stream", "--json"
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert "vda.raw.lz4" in [p.name for p in Path(row["backup"]).iterdir()]

    for extra, message in (
        (["--remote", "nowhere:x", "--remote-only"], "cannot be streamed to a remote"),
    ):
        for command in ("backup", "all"):
            names = [dom.name()] if command == "backup" else []
            result = virtbackup_in(
                state_dir, command, *names, "--dest", str(dest), "--layout", "repository", *extra
            )
            assert result.returncode == 2, result.stderr
            assert message in result.stderr and result.stderr.count("\n") <= 2, result.stderr
    bad = virtbackup("backup", dom.name(), "--dest", str(dest), "--layout", "chunks")
    assert bad.returncode == 2 and "--layout" in bad.stderr
