"""A backup is untrusted input: forged manifests (plain and sealed) and stream indexes
are refused by `restore` and `verify` with one line naming the file and the field,
exit 1, and nothing is written anywhere (trees listed before and after)."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from age_helpers import KeyPair, make_key_pair
from backup_helpers import DOMAIN_XML, MiB, cmp_files, disk_of, make_backup
from harness.cli import virtbackup as run_cli
from harness.images import build_fs_image

from virtbackup.adapters import age
from virtbackup.core.progress import NullProgress
from virtbackup.core.streamformat import (
    INDEX_BODY_DIGEST_SIZE,
    INDEX_FOOTER,
    INDEX_HEADER,
    SKIPPABLE_HEADER,
    chunked_digest_name,
    pack_header,
    unpack_header,
)
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import back_up_disks
from virtbackup.engine.stores.local import LocalStore

Tree = dict[str, tuple[int, int, int]]


def tree(root: Path) -> Tree:
    """Every entry under `root` (links not followed): mode, size and mtime."""
    listing: Tree = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            info = path.lstat()
            listing[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return listing


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fs_image(tmp_path_factory.mktemp("img") / "web1.raw", size=16 * MiB).path


@pytest.fixture
def backup(tmp_path: Path, image: Path) -> Path:
    return make_backup(tmp_path / "dest", [disk_of(image)]).path


def _assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr


def _forge_manifest(path: Path, **disk: Any) -> None:
    document = json.loads(path.read_text())
    document["disks"][0].update(disk)
    path.write_text(json.dumps(document))


FORGED_DISKS: list[tuple[Callable[[Path], dict[str, Any]], str]] = [
    (lambda _o: {"target": "../outside", "file": "../outside.raw.lz4"}, "disks[0].target"),
    (lambda o: {"target": f"{o}/", "format": "/pwned"}, "disks[0].target"),
    (lambda _o: {"format": "/pwned"}, "disks[0].format '/pwned' is not a disk image format"),
    (lambda _o: {"format": "raw/../../x"}, "disks[0].format"),
    (lambda _o: {"target": ".vda"}, "disks[0].target"),
    (lambda _o: {"target": "vda\0"}, "disks[0].target"),
    (lambda _o: {"file": "../vda.raw.lz4"}, "disks[0].file '../vda.raw.lz4' is not vda.raw.lz4"),
    (lambda _o: {"file": "vda.raw.lz4.age"}, "disks[0].file 'vda.raw.lz4.age' is not vda.raw"),
    (lambda _o: {"chunk_size": 1 << 32}, "disks[0].chunk_size 4294967296 is out of range"),
    (lambda _o: {"digest_algorithm": "md5-1MiB-chunks"}, "disks[0].digest_algorithm"),
    (lambda _o: {"byte_size": -1}, "disks[0].byte_size -1 is not a size"),
    (lambda _o: {"stored_size": True}, "key disks[0].stored_size is not of type int"),
]


@pytest.mark.parametrize(("forge", "field"), FORGED_DISKS)
def test_forged_manifest_is_refused_and_nothing_is_written(
    backup: Path, tmp_path: Path, forge: Callable[[Path], dict[str, Any]], field: str
) -> None:
    outside = tmp_path / "x"
    outside.mkdir()
    _forge_manifest(backup / "manifest.json", **forge(outside))
    before = tree(tmp_path)
    out = tmp_path / "restored"
    restored = run_cli("restore", str(backup), "--to", str(out))
    _assert_refused(restored, f"manifest {backup}/manifest.json is corrupt: {field}")
    verified = run_cli("verify", str(backup))
    _assert_refused(verified, f"manifest {backup}/manifest.json is corrupt: {field}")
    assert tree(tmp_path) == before  # not even --to was made
    assert not out.exists()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"method": "[/oops]"}, "method '[/oops]' is not a backup method"),
        ({"domain": {"name": "web/1", "uuid": "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11"}}, "name"),
        ({"domain": {"name": "web1", "uuid": "../../x"}}, "domain.uuid '../../x' is not a UUID"),
        ({"tool_version": "1\n2"}, "tool_version '1\\n2' is not a version"),
        ({"started": "2025-01-25T18:30:00+01:00"}, "'started' is not a UTC time"),
    ],
)
def test_forged_backup_fields_are_refused(
    backup: Path, tmp_path: Path, edit: dict[str, Any], field: str
) -> None:
    manifest = backup / "manifest.json"
    document = json.loads(manifest.read_text())
    document.update(edit)
    manifest.write_text(json.dumps(document))
    before = tree(tmp_path)
    result = run_cli("restore", str(backup), "--to", str(tmp_path / "restored"))
    _assert_refused(result, f"manifest {backup}/manifest.json is corrupt: ")
    assert field in result.stderr
    assert tree(tmp_path) == before


def test_stream_of_another_size_than_the_manifest_says_is_refused(
    backup: Path, tmp_path: Path
) -> None:
    with open(backup / "vda.raw.lz4", "ab") as stream:
        stream.write(b"appended")
    before = tree(tmp_path)
    result = run_cli("restore", str(backup), "--to", str(tmp_path / "restored"))
    _assert_refused(result, "vda: vda.raw.lz4 has ")
    assert "(truncated or appended to)" in result.stderr
    assert tree(tmp_path) == before


def _forge_index(stream: Path, frame_digest: str, chunk_size: int) -> None:
    """Rewrite the index header of `stream` as an attacker can: the body digest is
    recomputed, so only the rules on the fields can refuse it."""
    data = bytearray(stream.read_bytes())
    index_offset, _magic = INDEX_FOOTER.unpack(data[-INDEX_FOOTER.size :])
    body_start = index_offset + SKIPPABLE_HEADER.size
    body_end = len(data) - INDEX_FOOTER.size - INDEX_BODY_DIGEST_SIZE
    header = unpack_header(bytes(data[body_start : body_start + INDEX_HEADER.size]))
    forged = pack_header(
        header.__class__(
            **{
                **header.__dict__,
                "frame_digest": frame_digest,
                "chunk_size": chunk_size,
                "whole_digest_name": chunked_digest_name(chunk_size, frame_digest),
                "whole_digest": header.whole_digest.ljust(64, b"\0"),
            }
        )
    )
    data[body_start : body_start + INDEX_HEADER.size] = forged
    data[body_end : body_end + INDEX_BODY_DIGEST_SIZE] = hashlib.sha256(
        data[body_start:body_end]
    ).digest()
    stream.write_bytes(data)


@pytest.mark.parametrize(
    ("frame_digest", "chunk_size", "problem"),
    [
        ("shake_128", MiB, "index names an unsupported digest 'shake_128'"),
        ("md5", MiB, "index names an unsupported digest 'md5'"),
        ("sha256", (1 << 32) - 1, "index header has a chunk size of 4294967295 bytes"),
        ("sha256", 1, "index header has a chunk size of 1 bytes"),
    ],
)
def test_forged_index_is_refused_without_a_traceback(
    backup: Path, tmp_path: Path, frame_digest: str, chunk_size: int, problem: str
) -> None:
    _forge_index(backup / "vda.raw.lz4", frame_digest, chunk_size)
    before = tree(tmp_path)
    out = tmp_path / "restored"
    restored = run_cli("restore", str(backup), "--to", str(out))
    _assert_refused(restored, f"vda: vda.raw.lz4 has a bad index ({problem}")
    assert tree(tmp_path) == before
    verified = run_cli("verify", str(backup))
    _assert_refused(verified, f"vda: vda.raw.lz4 has a bad index ({problem}")
    after = tree(tmp_path)
    record = "dest/web1/" + backup.name + "/verified.json"
    assert set(after) - set(before) == {record}  # verify records the failure, nothing else
    assert json.loads((tmp_path / record).read_text())["ok"] is False
    assert not out.exists()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def sealed_backup(tmp_path: Path, image: Path, keys: KeyPair) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir()
    result = back_up_disks(
        LocalStore(dest),
        "web1",
        "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
        DOMAIN_XML,
        "offline",
        [disk_of(image)],
        NullProgress(),
        WriterOptions(chunk_size=MiB),
        encrypt_to=age.read_recipients(keys.recipients),
    )
    assert isinstance(result.path, Path)
    return result.path


def test_sealed_manifest_forged_with_the_public_key_is_refused(
    sealed_backup: Path, tmp_path: Path, keys: KeyPair
) -> None:
    """Only the public recipients file is needed to seal a forged manifest."""
    outside = tmp_path / "x"
    outside.mkdir()
    forged = {
        "tool": "virtbackup",
        "tool_version": "0.1.0",
        "format_version": 1,
        "domain": {"name": "web1", "uuid": "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11"},
        "started": "2025-01-25T18:30:00Z",
        "finished": "2025-01-25T18:31:00Z",
        "method": "offline",
        "disks": [
            {
                "target": f"{outside}/",
                "source": "/dev/null",
                "format": "/pwned",
                "virtual_size": 16 * MiB,
                "byte_size": 16 * MiB,
                "stored_size": (sealed_backup / "vda.raw.lz4.age").stat().st_size,
                "file": "vda.raw.lz4.age",
                "stream_format_version": 1,
                "chunk_size": MiB,
                "digest_algorithm": "sha256-1MiB-chunks",
                "digest": "00" * 32,
            }
        ],
    }
    subprocess.run(
        ["age", "-R", str(keys.recipients), "-o", str(sealed_backup / "manifest.json.age")],
        input=json.dumps(forged).encode(),
        check=True,
    )
    before = tree(tmp_path)
    out = tmp_path / "restored"
    result = run_cli(
        "restore", str(sealed_backup), "--to", str(out), "--identity", str(keys.identity)
    )
    _assert_refused(
        result, f"manifest {sealed_backup}/manifest.json.age is corrupt: disks[0].target"
    )
    assert tree(tmp_path) == before
    assert not out.exists()


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"file": "../vda.raw.lz4.age", "target": "vda"}, "files[0].file"),
        ({"file": "vda.raw.lz4.age", "target": "../vda"}, "files[0].target"),
        ({"file": "vda.raw", "target": "vda"}, "files[0].file 'vda.raw' is not the stream"),
        ({"file": ".hidden"}, "files[0].file '.hidden' is not a file of a backup"),
    ],
)
def test_forged_public_manifest_is_refused(
    sealed_backup: Path, tmp_path: Path, keys: KeyPair, entry: dict[str, str], field: str
) -> None:
    manifest = sealed_backup / "manifest.json"
    document = json.loads(manifest.read_text())
    document["files"][0] = {**entry, "stored_size": 1}
    manifest.write_text(json.dumps(document))
    before = tree(tmp_path)
    result = run_cli(
        "restore",
        str(sealed_backup),
        "--to",
        str(tmp_path / "restored"),
        "--identity",
        str(keys.identity),
    )
    _assert_refused(result, f"manifest {sealed_backup}/manifest.json is corrupt: {field}")
    assert tree(tmp_path) == before


def test_restore_replaces_a_planted_link_and_never_writes_through_it(
    backup: Path, image: Path, tmp_path: Path
) -> None:
    """--to holds links named like the image and its temporary file: restore replaces
    the link to the image with the image and never writes the files they point to."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "restored"
    out.mkdir()
    (out / "vda.raw").symlink_to(victim)
    (out / ".vda.raw.restoring").symlink_to(victim)
    result = run_cli("restore", str(backup), "--to", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == b"precious"
    assert stat.S_ISREG((out / "vda.raw").lstat().st_mode)
    assert cmp_files(out / "vda.raw", image)
    assert sorted(os.listdir(out)) == ["vda.raw"]


def test_restore_directories_are_reachable_by_qemu_under_umask_077(
    backup: Path, tmp_path: Path
) -> None:
    """Directories restore makes are 0711 (qemu's user passes through, lists nothing),
    whatever the umask; an existing directory keeps its mode; images stay 0600."""
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o750)
    existing.chmod(0o750)
    out = existing / "new" / "restored"
    result = subprocess.run(
        [sys.executable, "-m", "virtbackup", "restore", str(backup), "--to", str(out)],
        preexec_fn=lambda: os.umask(0o077),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(existing.stat().st_mode) == 0o750
    assert stat.S_IMODE((existing / "new").stat().st_mode) == 0o711
    assert stat.S_IMODE(out.stat().st_mode) == 0o711
    assert stat.S_IMODE((out / "vda.raw").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["manifest.json", "vda.raw.lz4", "domain.xml"])
@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_files_of_a_backup_are_read_only_as_regular_files(
    backup: Path, tmp_path: Path, name: str, kind: str
) -> None:
    """A FIFO would hang verify and restore; a link would make them read a host file."""
    secret = tmp_path / "secret"
    secret.write_text("not for backups\n")
    (backup / name).unlink()
    if kind == "fifo":
        os.mkfifo(backup / name)
    else:
        (backup / name).symlink_to(secret)
    before = tree(tmp_path)
    out = tmp_path / "restored"
    args = ["--define", "copy-of-web1"] if name == "domain.xml" else []
    restored = run_cli("restore", str(backup), "--to", str(out), *args, timeout=60)
    _assert_refused(restored, f"{backup / name}")
    assert "not for backups" not in restored.stderr
    assert tree(tmp_path) == before
    if name != "domain.xml":  # verify does not read the domain XML
        verified = run_cli("verify", str(backup), timeout=60)
        assert verified.returncode == 1, verified.stderr
        assert f"{backup / name}" in verified.stderr and "Traceback" not in verified.stderr


def test_a_forged_network_source_reaches_the_terminal_as_one_inert_line(
    backup: Path, tmp_path: Path, image: Path
) -> None:
    forged = "nbd://evil/x\x1b]0;owned\x07\x1b[2J\nvirtbackup: all verified\u202e"
    _forge_manifest(backup / "manifest.json", source=forged)
    out = tmp_path / "restored"
    result = run_cli("restore", str(backup), "--to", str(out))
    assert result.returncode == 0, result.stderr
    assert cmp_files(image, out / "vda.raw")
    (note,) = [line for line in result.stderr.splitlines() if "network disk" in line]
    assert "nbd://evil/x\\x1b]0;owned\\x07\\x1b[2J\\nvirtbackup: all verified" in note, note
    for shown in (result.stdout, result.stderr):
        assert not any(c in shown for c in "\x1b\x07\u202e"), shown
        assert "\nvirtbackup: all verified" not in shown
