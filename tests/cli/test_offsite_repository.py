"""Offsite copies of repository backups against real S3 (moto) and SFTP servers on
loopback: only the chunks the remote lacks go up, a chunk lost on the remote is sent
again, a killed upload resumes, restore and verify read the remote repository, and an
encrypted repository shows the remote nothing but sealed chunks; a hostile remote's
endless objects are refused from their listed size before they are fetched."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from age_helpers import make_key_pair
from harness.cli import virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory
from harness.remotes import RemoteServer
from offsite_helpers import (
    backup,
    dense_image,
    index_lines,
    offsite_config,
    remote_files,
    start_backup,
    wait_for_upload,
)

from virtbackup.adapters import rclone
from virtbackup.adapters.locks import remote_repository_lock

CHUNKS = ".virtbackup-repository/chunks"
SEALED = ".virtbackup-repository/sealed-chunks"


def restore_from_remote(
    state_dir: Path, config: Path, name: str, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return virtbackup_in(
        state_dir, "--config", str(config), "restore", "--remote", name, "--to", str(out), *extra
    )


@pytest.mark.parametrize("kind", ["s3", "sftp"])
def test_only_new_chunks_go_up_a_lost_one_is_sent_again_and_restore_reads_the_remote(
    kind: str,
    domain_factory: DomainFactory,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    remote: RemoteServer = request.getfixturevalue(f"{kind}_remote")
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=3 * MiB, deleted=MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint=f"rr{kind}")
    config = offsite_config(tmp_path / "vb.toml", dest, remote)  # no layout: the repository

    first = backup(state_dir, config, dom.name(), tmp_path / "1.log")
    named = index_lines(first)
    local_chunks = dest / CHUNKS
    up = rclone.list_file_sizes(remote.remote, CHUNKS)
    assert named <= set(up)
    assert all(up[name] == (local_chunks / name).stat().st_size for name in named)
    on_remote = remote_files(remote, f"host-a/{dom.name()}/{first.name}")
    assert on_remote == {p.name: p.stat().st_size for p in first.iterdir()}
    assert (
        f"{len(named)} of its {len(named)} chunks sent offsite" in (tmp_path / "1.log").read_text()
    )

    time.sleep(1.1)  # a new stamp
    second = backup(state_dir, config, dom.name(), tmp_path / "2.log")
    assert index_lines(second) == named  # unchanged: the same chunks ...
    assert f"0 of its {len(named)} chunks sent offsite" in (tmp_path / "2.log").read_text()
    assert rclone.list_file_sizes(remote.remote, CHUNKS) == up  # ... and nothing new up there

    zero = hashlib.sha256(bytes(4 * MiB)).hexdigest()
    victim = sorted(name for name in named if not name.endswith(zero))[0]
    rclone.delete_file(remote.remote, f"{CHUNKS}/{victim}")  # lost on the remote
    time.sleep(1.1)
    third = backup(state_dir, config, dom.name(), tmp_path / "3.log")
    assert "(1 of them again" in (tmp_path / "3.log").read_text()
    assert rclone.list_file_sizes(remote.remote, CHUNKS) == up

    name = f"{dom.name()}/{third.name}"
    out = tmp_path / "out"
    restored = restore_from_remote(state_dir, config, name, out)
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(raw.path), str(out / "vda.raw")], check=True)
    assert os.stat(out / "vda.raw").st_blocks <= os.stat(raw.path).st_blocks  # sparse

    # a chunk lost on the remote after the last copy: verify from the remote names it
    rclone.delete_file(remote.remote, f"{CHUNKS}/{victim}")
    broken = virtbackup_in(state_dir, "--config", str(config), "verify", "--remote", name)
    assert broken.returncode != 0 and victim.split("/")[1] in broken.stderr, broken.stderr
    assert broken.stderr.count("\n") <= 2, broken.stderr


def test_a_killed_upload_resumes_and_the_remote_backup_is_complete(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    data = dense_image(domain_factory.workdir / "dense.raw", 12 * MiB)  # three chunks
    dom = domain_factory.create([DiskSpec("raw", image=data)], hint="rrkill")
    slow = offsite_config(tmp_path / "slow.toml", dest, sftp_remote, remote_extra='bwlimit = "1M"')
    child = start_backup(state_dir, slow, dom.name())
    wait_for_upload(sftp_remote, CHUNKS, child, 2 * MiB)
    os.killpg(child.pid, signal.SIGKILL)  # virtbackup and its rclone, mid-way
    child.wait()
    (local,) = (dest / dom.name()).iterdir()
    assert "manifest.json" not in remote_files(sftp_remote, f"host-a/{dom.name()}/{local.name}")
    listed = virtbackup_in(state_dir, "--config", str(slow), "backups", "--remote", "--json")
    assert json.loads(listed.stdout)["backups"] == []  # an interrupted upload is not a backup

    fast = offsite_config(tmp_path / "fast.toml", dest, sftp_remote)
    time.sleep(1.1)
    backup(state_dir, fast, dom.name(), tmp_path / "resume.log")
    listed = virtbackup_in(state_dir, "--config", str(fast), "backups", "--remote", "--json")
    stamps = {b["stamp"] for b in json.loads(listed.stdout)["backups"]}
    assert local.name in stamps and len(stamps) == 2  # the interrupted one caught up
    up = rclone.list_file_sizes(sftp_remote.remote, CHUNKS)
    for name in index_lines(local):
        assert up[name] == (dest / CHUNKS / name).stat().st_size
    out = tmp_path / "out"
    restored = restore_from_remote(state_dir, fast, f"{dom.name()}/{local.name}", out)
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(data), str(out / "vda.raw")], check=True)


def test_an_encrypted_repository_shows_the_remote_sealed_chunks_only(
    domain_factory: DomainFactory,
    s3_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    raw = build_fs_image(domain_factory.workdir / "secret.raw", content=3 * MiB, deleted=0)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="rrenc")
    config = offsite_config(
        tmp_path / "vb.toml", dest, s3_remote, extra=f'encrypt = "{keys.recipients}"'
    )
    local = backup(state_dir, config, dom.name(), tmp_path / "vb.log")
    assert rclone.list_file_sizes(s3_remote.remote, CHUNKS) == {}
    sealed = rclone.list_file_sizes(s3_remote.remote, SEALED)
    assert index_lines(local) <= set(sealed)
    image = raw.path.read_bytes()
    plain = {
        hashlib.sha256(image[offset : offset + 4 * MiB]).hexdigest()
        for offset in range(0, len(image), 4 * MiB)
    }
    listed = rclone.list_file_sizes(s3_remote.remote, "")
    assert not any(name.rsplit("/", 1)[-1].removesuffix(".age") in plain for name in listed)
    for name in sealed:
        with rclone.download_stream(s3_remote.remote, f"{SEALED}/{name}") as pipe:
            assert pipe.read(21) == b"age-encryption.org/v1"
            pipe.read()

    out = tmp_path / "out"
    name = f"{dom.name()}/{local.name}"
    restored = restore_from_remote(state_dir, config, name, out, "-i", str(keys.identity))
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(raw.path), str(out / "vda.raw")], check=True)


def test_remote_prune_and_gc_remove_only_chunks_no_backup_names_and_export_reads_it(
    domain_factory: DomainFactory,
    s3_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    image = dense_image(domain_factory.workdir / "gc.raw", 8 * MiB)  # two chunks
    dom = domain_factory.create([DiskSpec("raw", image=image)], hint="rrgc")
    config = offsite_config(tmp_path / "vb.toml", dest, s3_remote)
    old = backup(state_dir, config, dom.name(), tmp_path / "1.log")
    with open(image, "r+b") as f:
        f.write(os.urandom(MiB))  # the first chunk changes, the second stays
    time.sleep(1.1)
    new = backup(state_dir, config, dom.name(), tmp_path / "2.log")
    gone = index_lines(old) - index_lines(new)
    assert len(gone) == 1
    # an upload of another host in progress: its index is up, its manifest not yet
    rclone.copy_file(
        s3_remote.remote, old / "vda.raw.idx", "host-b/web/20250101T000000Z/vda.raw.idx"
    )

    def run(*args: str, grace: int = 0) -> subprocess.CompletedProcess[str]:
        settings = offsite_config(
            tmp_path / "gc.toml", dest, s3_remote, extra=f"gc_grace = {grace}"
        )
        return virtbackup_in(state_dir, "--config", str(settings), *args)

    pruned = run("prune", "--remote", "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    remaining = rclone.list_entries(s3_remote.remote, f"host-a/{dom.name()}")
    assert {e.path for e in remaining} == {new.name}
    kept = run("gc", "--remote", "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["removed"] == 0  # the upload in progress names it
    rclone.purge(s3_remote.remote, "host-b")  # that upload given up

    with remote_repository_lock(state_dir, shared=True):  # an upload of this host runs
        locked = run("gc", "--remote")
    assert locked.returncode == 3 and "in use" in locked.stderr, locked.stderr
    young = run("gc", "--remote", "--json", grace=3600)
    assert json.loads(young.stdout)["young"] == 1  # unnamed but used within the grace
    dry = run("gc", "--remote", "--dry-run", "--json")
    assert json.loads(dry.stdout)["removed"] == 1
    assert gone <= set(rclone.list_file_sizes(s3_remote.remote, CHUNKS))
    swept = run("gc", "--remote", "--json")
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["removed"] == 1
    left = set(rclone.list_file_sizes(s3_remote.remote, CHUNKS))
    assert left == index_lines(new)
    name = f"{dom.name()}/{new.name}"
    verified = virtbackup_in(state_dir, "--config", str(config), "verify", "--remote", name)
    assert verified.returncode == 0, verified.stderr
    exported = virtbackup_in(
        state_dir, "--config", str(config), "export", "--remote", name, "--to", str(tmp_path)
    )
    assert exported.returncode == 0, exported.stderr
    stream = tmp_path / name / "vda.raw.lz4"
    subprocess.run(["sh", "-c", f"lz4 -dc {stream} | cmp - {image}"], check=True)


def test_restore_refuses_endless_remote_objects_before_fetching_them(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=3 * MiB, deleted=MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="rrhostile")
    config = offsite_config(tmp_path / "vb.toml", dest, sftp_remote)
    local = backup(state_dir, config, dom.name(), tmp_path / "up.log")
    name = f"{dom.name()}/{local.name}"
    served = sftp_remote.local_path("")
    assert served is not None
    chunk = sorted(index_lines(local))[0]
    planted = {  # each replaced in turn by a sparse file larger than its kind can be
        served / CHUNKS / chunk: 200 * MiB,
        served / "host-a" / name / "vda.raw.idx": 80 * MiB,
        served / ".virtbackup-repository" / "repository.json": 100 * MiB,
    }
    for number, (path, size) in enumerate(planted.items()):
        kept = tmp_path / f"kept{number}"
        shutil.copy2(path, kept)
        os.truncate(path, size)
        refused = restore_from_remote(state_dir, config, name, tmp_path / f"out{number}")
        assert refused.returncode == 1, refused.stderr
        assert f"{path.name} is too large to be ours ({size} bytes" in refused.stderr
        assert refused.stderr.count("\n") <= 2, refused.stderr
        shutil.copy2(kept, path)

    # a description with a hostile chunk size or version: refused in one line
    description = served / ".virtbackup-repository" / "repository.json"
    kept_text = description.read_text()
    for field, value, said in (
        ("chunk_size", 1 << 40, "invalid chunk_size"),
        ("version", 99, "version 99"),
    ):
        description.write_text(json.dumps({**json.loads(kept_text), field: value}))
        refused = restore_from_remote(state_dir, config, name, tmp_path / f"out-{field}")
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") <= 2 and "Traceback" not in refused.stderr
    description.write_text(kept_text)

    # a chunk holding another chunk's bytes, at the same size: named, nothing restored
    other = sorted(index_lines(local))[-1]
    kept = tmp_path / "kept-content"
    shutil.copy2(served / CHUNKS / chunk, kept)
    with open(served / CHUNKS / chunk, "r+b") as forged:
        forged.write((served / CHUNKS / other).read_bytes()[: kept.stat().st_size])
    broken = virtbackup_in(state_dir, "--config", str(config), "verify", "--remote", name)
    assert broken.returncode == 1 and chunk.split("/")[1] in broken.stderr, broken.stderr
    shutil.copy2(kept, served / CHUNKS / chunk)

    restored = restore_from_remote(state_dir, config, name, tmp_path / "out")
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(raw.path), str(tmp_path / "out" / "vda.raw")], check=True)


def _session_members(sid: int) -> list[int]:
    """The processes still in session `sid` (virtbackup's rclone among them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                continue
    return found


def test_sigterm_mid_upload_ends_rclone_keeps_the_local_backup_and_resumes(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    data = dense_image(domain_factory.workdir / "term.raw", 12 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=data)], hint="rrterm")
    slow = offsite_config(tmp_path / "slow.toml", dest, sftp_remote, remote_extra='bwlimit = "1M"')
    child = start_backup(state_dir, slow, dom.name())
    wait_for_upload(sftp_remote, CHUNKS, child, MiB)
    os.kill(child.pid, signal.SIGTERM)  # virtbackup alone, as a service manager may
    assert child.wait(timeout=60) == 130
    assert _session_members(child.pid) == []  # its rclone did not outlive it
    (local,) = (dest / dom.name()).iterdir()
    assert (local / "manifest.json").is_file()  # the local backup is whole
    assert "manifest.json" not in remote_files(sftp_remote, f"host-a/{dom.name()}/{local.name}")

    time.sleep(1.1)
    backup(
        state_dir,
        offsite_config(tmp_path / "fast.toml", dest, sftp_remote),
        dom.name(),
        tmp_path / "r.log",
    )
    assert "manifest.json" in remote_files(sftp_remote, f"host-a/{dom.name()}/{local.name}")


def test_a_linked_remote_chunk_cache_into_a_shared_directory_is_refused(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    raw = build_fs_image(domain_factory.workdir / "link.raw", content=MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="rrlink")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # where any user could poison what the cache says
    state_dir.mkdir(mode=0o700)
    (state_dir / "remote-chunks").symlink_to(shared)
    config = offsite_config(tmp_path / "vb.toml", dest, sftp_remote)
    result = virtbackup_in(state_dir, "--config", str(config), "backup", dom.name())
    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert f"state directory {state_dir / 'remote-chunks'} is writable by group or others" in said
    assert list(shared.iterdir()) == []  # nothing written through the link
