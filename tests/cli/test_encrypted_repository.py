"""`backup --layout repository --encrypt` end to end: real domains, real age keys, the
encrypted chunks beside the plain ones in one DEST, and what someone holding only the
repository (no identity) can learn from it."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from age_helpers import KeyPair, make_key_pair
from harness.cli import NO_HOST_CONFIG, virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory
from repository_helpers import wait_for

from virtbackup.core import repository_format
from virtbackup.core.repository_format import REPOSITORY_DIR
from virtbackup.engine.stores.chunk_store import ChunkStore

CHUNK = 4 * MiB


def _backup(state_dir: Path, dest: Path, name: str, *args: str) -> Path:
    result = virtbackup_in(
        state_dir, "backup", name, "--dest", str(dest), "--layout", "repository", *args, "--json"
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return Path(row["backup"])


def _encrypted(state_dir: Path, dest: Path, name: str, keys: KeyPair) -> Path:
    return _backup(state_dir, dest, name, "--encrypt", str(keys.recipients))


def _known_chunk(image: Path) -> bytes:
    """The first chunk of the image that is not all zeros."""
    with image.open("rb") as source:
        while chunk := source.read(CHUNK):
            if chunk.count(0) != len(chunk):
                return chunk
    raise AssertionError(f"{image} holds only zeros")


def _readme_command(marker: str) -> str:
    """The stock-tool command of the README whose first line holds `marker` (with its
    continuation line), checked to be the one the format's specification shows."""
    lines = (Path(__file__).parents[2] / "README.md").read_text().splitlines()
    first = next(n for n, line in enumerate(lines) if marker in line and line.startswith("sed"))
    command = "\n".join(lines[first : first + 2])
    assert command.endswith("> vda.raw"), command
    spec = Path(repository_format.__file__).read_text()

    def words(text: str) -> list[str]:
        return text.replace("\\", " ").split()

    assert " ".join(words(command)) in " ".join(words(spec))
    return command


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n[:16]!r}" for n in needles if n in data]
    return found


def test_encrypted_repository_reveals_nothing_and_restores_on_a_new_host(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=6 * MiB, deleted=2 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="encrepo")
    plain = _backup(state_dir, dest, dom.name())
    time.sleep(1.1)
    first = _encrypted(state_dir, dest, dom.name(), keys)
    assert sorted(p.name for p in first.iterdir()) == [
        "domain.xml.age",
        "manifest.json",
        "manifest.json.age",
        "vda.raw.idx",
    ]
    repository = dest / REPOSITORY_DIR
    sealed = sorted((repository / "sealed-chunks").rglob("*"))
    plain_chunks = sorted((repository / "chunks").rglob("*"))
    assert len(sealed) > 2 and len(plain_chunks) > 2
    secret_files = list((repository / "secrets").iterdir())
    assert len(secret_files) == 1
    host_copies = list((state_dir / "repository-secrets").iterdir())
    assert len(host_copies) == 1 and host_copies[0].stat().st_mode & 0o777 == 0o600

    # dedup: a second encrypted backup of the unchanged disk adds no chunk
    time.sleep(1.1)
    second = _encrypted(state_dir, dest, dom.name(), keys)
    assert sorted((repository / "sealed-chunks").rglob("*")) == sealed
    assert (second / "vda.raw.idx").read_bytes() == (first / "vda.raw.idx").read_bytes()

    # accounting without a key: what removing each frees, the encrypted chunks apart
    listed = virtbackup_in(state_dir, "backups", "--dest", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {Path(b["path"]).name: b for b in json.loads(listed.stdout)["backups"]}
    sealed_bytes = sum(p.stat().st_size for p in sealed if p.is_file())
    own = {b: sum(p.stat().st_size for p in b.iterdir()) for b in (first, second)}
    assert rows[first.name]["frees"] == own[first]  # every chunk is shared with `second`
    assert rows[second.name]["frees"] == own[second]
    summary = virtbackup_in(state_dir, "backups", "--dest", str(dest), "--summary", "--json")
    encrypted = json.loads(summary.stdout)["repository"]["encrypted"]
    files = [p for p in sealed if p.is_file()]
    assert encrypted == {"chunks": len(files), "stored_bytes": sealed_bytes, "backups": 2}

    # nothing outside the plain backup reveals a chunk's digest nor its data
    chunk = _known_chunk(raw.path)
    digest = hashlib.sha256(chunk).hexdigest()
    needles = [digest.encode(), bytes.fromhex(digest), chunk[-4096:]]
    encrypted_places = [first, second, repository / "sealed-chunks", repository / "secrets"]
    for place in encrypted_places:
        assert _files_holding(place, needles) == [], place
    for path in (repository / "repository.json", *(repository / "sealed-chunks").rglob("*")):
        assert digest not in path.name and digest not in str(path)
    assert _files_holding(repository / "chunks", [needles[0]]) == []  # (a name, not content)
    assert any(digest in p.name for p in plain_chunks)  # the plain backup's are plain

    # a new host: a fresh state directory, the identity and DEST only
    new_host = tmp_path / "new-host-state"
    out = tmp_path / "restored"
    result = virtbackup_in(
        new_host, "restore", str(second), "--to", str(out), "--identity", str(keys.identity)
    )
    assert result.returncode == 0, result.stderr
    subprocess.run(["cmp", str(raw.path), str(out / "vda.raw")], check=True)
    assert os.stat(out / "vda.raw").st_blocks <= os.stat(raw.path).st_blocks * 1.01
    verified = virtbackup_in(new_host, "verify", str(second), "--identity", str(keys.identity))
    assert verified.returncode == 0, verified.stderr

    # export: a cleartext stream backup, restorable without a key
    exported = virtbackup_in(
        new_host,
        "export",
        str(second),
        "--to",
        str(tmp_path / "export"),
        "--identity",
        str(keys.identity),
    )
    assert exported.returncode == 0, exported.stderr
    (copy,) = (tmp_path / "export").glob("*/*")
    assert sorted(p.name for p in copy.iterdir()) == ["domain.xml", "manifest.json", "vda.raw.lz4"]
    result = virtbackup_in(new_host, "restore", str(copy), "--to", str(tmp_path / "from-export"))
    assert result.returncode == 0, result.stderr
    subprocess.run(["cmp", str(raw.path), str(tmp_path / "from-export" / "vda.raw")], check=True)

    # the stock-tool restore the README and the format document, exactly (run beside a
    # copy of the index: the backup directory stays as it is)
    command = _readme_command("sealed-chunks/").replace("DEST", str(dest))
    command = command.replace("KEYFILE", str(keys.identity))
    beside = tmp_path / "stock"
    beside.mkdir()
    shutil.copy(second / "vda.raw.idx", beside)
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, cwd=beside)
    stock = beside / "vda.raw"
    subprocess.run(["cmp", str(raw.path), str(stock)], check=True)

    # gc keeps the chunks of both kinds; once the encrypted backups go, theirs go
    no_grace = tmp_path / "gc.toml"
    no_grace.write_text("gc_grace = 0\n")
    gc = virtbackup_in(state_dir, "--config", str(no_grace), "gc", "--dest", str(dest))
    assert gc.returncode == 0, gc.stderr
    assert sorted((repository / "sealed-chunks").rglob("*")) == sealed
    assert sorted((repository / "chunks").rglob("*")) == plain_chunks
    for backup in (first, second):
        subprocess.run(["rm", "-rf", str(backup)], check=True)
    gc = virtbackup_in(state_dir, "--config", str(no_grace), "gc", "--dest", str(dest))
    assert gc.returncode == 0, gc.stderr
    assert [p for p in (repository / "sealed-chunks").rglob("*") if p.is_file()] == []
    assert sorted((repository / "chunks").rglob("*")) == plain_chunks
    restored = virtbackup_in(state_dir, "restore", str(plain), "--to", str(tmp_path / "p"))
    assert restored.returncode == 0, restored.stderr


def test_damaged_chunk_wrong_identity_and_a_host_without_the_secret(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    other = make_key_pair(tmp_path / "keys", "other")
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=6 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="encbad")
    backup = _encrypted(state_dir, dest, dom.name(), keys)
    repository = dest / REPOSITORY_DIR

    wrong = virtbackup_in(
        state_dir,
        "restore",
        str(backup),
        "--to",
        str(tmp_path / "w"),
        "--identity",
        str(other.identity),
    )
    assert wrong.returncode == 2, wrong.stderr
    assert "no key in identity file" in wrong.stderr and "Traceback" not in wrong.stderr
    assert wrong.stderr.count("\n") <= 2, wrong.stderr  # the error and its hint

    # recipients changed: the same secret, encrypted to the new recipients too; the new
    # backup's chunks are its own (each identity opens only the chunks made for it)
    time.sleep(1.1)
    renewed = _encrypted(state_dir, dest, dom.name(), other)
    assert len(list((repository / "secrets").iterdir())) == 2
    assert len(list((state_dir / "repository-secrets").iterdir())) == 1
    old_names = set((backup / "vda.raw.idx").read_text().split())
    renewed_names = (renewed / "vda.raw.idx").read_text().split()
    assert old_names.isdisjoint(renewed_names)
    for identity, which in ((other.identity, renewed), (keys.identity, backup)):
        result = virtbackup_in(
            tmp_path / "fresh", "verify", str(which), "--identity", str(identity)
        )
        assert result.returncode == 0, result.stderr

    # a host without the secret cannot write encrypted backups here, and says how to
    time.sleep(1.1)
    lost = virtbackup_in(
        tmp_path / "another-host",
        "backup",
        dom.name(),
        "--dest",
        str(dest),
        "--layout",
        "repository",
        "--encrypt",
        str(keys.recipients),
    )
    assert lost.returncode != 0
    assert "secret this host does not hold" in lost.stdout + lost.stderr

    # a damaged chunk: verify and restore fail in one line naming it
    index = (backup / "vda.raw.idx").read_text().split()
    damaged = next(repository / "sealed-chunks" / n for n in index if index.count(n) == 1)
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    for command in (["verify", str(backup)], ["restore", str(backup), "--to", str(tmp_path / "x")]):
        result = virtbackup_in(state_dir, *command, "--identity", str(keys.identity))
        assert result.returncode == 1, result.stdout + result.stderr
        line = (result.stdout + result.stderr).strip().splitlines()[-1]
        assert damaged.name in line and str(backup) in line, line
        assert "Traceback" not in result.stderr

    # the whole repository: without a key only what exists can be told; with one the
    # damaged chunk is named with the backup using it (and the other identity's chunks
    # cannot be opened by this one)
    whole = ["verify", "--all-chunks", "--dest", str(dest)]
    result = virtbackup_in(state_dir, *whole)
    assert result.returncode == 0, result.stdout + result.stderr
    result = virtbackup_in(state_dir, *whole, "--identity", str(keys.identity))
    assert result.returncode == 1, result.stdout + result.stderr
    (problem,) = result.stderr.strip().splitlines()
    assert damaged.name in problem and "is damaged" in problem, problem
    assert backup.name in problem and renewed.name not in problem, problem
    total = len([p for p in (repository / "sealed-chunks").rglob("*") if p.is_file()])
    assert f"{total - len(set(renewed_names))} of {total} chunks read" in result.stdout
    damaged.unlink()
    result = virtbackup_in(state_dir, *whole)
    assert result.returncode == 1, result.stdout + result.stderr
    (problem,) = [line for line in result.stderr.splitlines() if damaged.name in line]
    assert "is missing" in problem and backup.name in problem, problem


def test_kill_9_of_the_first_encrypted_backup_leaves_nothing_referenced_missing(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    image = domain_factory.workdir / "disk.raw"
    image.write_bytes(os.urandom(4 * CHUNK))
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="enckill")
    argv = [
        *("backup", dom.name(), "--dest", str(dest), "--layout", "repository"),
        *("--encrypt", str(keys.recipients), "--bwlimit", "2M"),
    ]
    environment = {**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)}
    running = subprocess.Popen(
        [sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, *argv],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sealed = ChunkStore(dest, sealed=True)
    try:
        wait_for(lambda: any(True for _ in sealed.names()))
    finally:
        running.send_signal(signal.SIGKILL)
        running.communicate()
    assert running.returncode == -signal.SIGKILL
    assert list(dest.glob(f"{dom.name()}/2*")) == []  # no complete backup
    killed_chunks = {name for name, _ in sealed.names()}

    # the next backup uses the secret the killed one made, and its chunks
    time.sleep(1.1)
    backup = _encrypted(state_dir, dest, dom.name(), keys)
    names = set((backup / "vda.raw.idx").read_text().split())
    assert {f"{n[:2]}/{n}" for n in killed_chunks} <= names
    cleaned = virtbackup_in(state_dir, "clean", "--dest", str(dest))
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    no_grace = tmp_path / "gc.toml"
    no_grace.write_text("gc_grace = 0\n")
    gc = virtbackup_in(state_dir, "--config", str(no_grace), "gc", "--dest", str(dest))
    assert gc.returncode == 0, gc.stderr
    for command in (
        ["verify", str(backup)],
        ["verify", "--all-chunks", "--dest", str(dest)],
        ["restore", str(backup), "--to", str(tmp_path / "out")],
    ):
        result = virtbackup_in(tmp_path / "new-host", *command, "--identity", str(keys.identity))
        assert result.returncode == 0, result.stdout + result.stderr
    subprocess.run(["cmp", str(image), str(tmp_path / "out" / "vda.raw")], check=True)


def test_two_first_encrypted_backups_at_once_make_one_secret(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    domains = [domain_factory.create([DiskSpec("raw")], hint=f"encpair{n}") for n in (1, 2)]
    environment = {**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)}
    running = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, "backup", dom.name()),
                *("--dest", str(dest), "--layout", "repository"),
                *("--encrypt", str(keys.recipients)),
            ],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for dom in domains
    ]
    for process in running:
        _out, errors = process.communicate()
        assert process.returncode == 0, errors
    assert len(list((dest / REPOSITORY_DIR / "secrets").iterdir())) == 1
    assert len(list((state_dir / "repository-secrets").iterdir())) == 1
    for dom in domains:
        (backup,) = dest.glob(f"{dom.name()}/2*")
        result = virtbackup_in(
            tmp_path / "new-host", "verify", str(backup), "--identity", str(keys.identity)
        )
        assert result.returncode == 0, result.stdout + result.stderr
