"""Offsite copies through the CLI against real SFTP, FTP and S3 servers on loopback:
copy and stream, list, restore and verify from the remote, failed and killed uploads,
retention on the remote and hosts sharing one remote."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from age_helpers import make_key_pair
from backup_helpers import manifest_at
from harness.cli import virtbackup, virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory
from harness.remotes import RemoteServer
from offsite_helpers import dense_image, offsite_config, remote_files, start_backup

from virtbackup.adapters import rclone

STREAMS = (
    'layout = "stream"'  # copies of stream backups (the repository's: test_offsite_repository)
)


def test_copy_list_restore_and_verify_from_the_remote(
    domain_factory: DomainFactory,
    remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=3 * MiB, deleted=MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="copy")
    # the stream layout, as configured: its copies go up a file per disk
    config = offsite_config(tmp_path / "vb.toml", dest, remote, extra=STREAMS)
    log = tmp_path / "vb.log"
    result = virtbackup_in(
        state_dir,
        "--config",
        str(config),
        "-v",
        "--log-file",
        str(log),
        "backup",
        dom.name(),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert (row["result"], row["offsite"]) == ("ok", "copied")
    assert "rclone copy" in log.read_text()  # -v shows each command ...
    for secret in remote.secrets:  # ... and never a password or key
        assert secret not in log.read_text() and secret not in result.stderr
    local = Path(row["backup"])
    assert (local / "vda.raw.lz4").is_file()
    on_remote = remote_files(remote, f"host-a/{dom.name()}/{local.name}")
    assert on_remote == {p.name: p.stat().st_size for p in local.iterdir()}

    listed = virtbackup_in(state_dir, "--config", str(config), "backups", "--remote", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)["backups"]
    assert (entry["domain"], entry["stamp"], entry["encrypted"]) == (dom.name(), local.name, False)

    name = f"{dom.name()}/{local.name}"
    out = tmp_path / "out"
    restored = virtbackup_in(
        state_dir, "--config", str(config), "restore", "--remote", name, "--to", str(out)
    )
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(raw.path), str(out / "vda.raw")], check=True)
    assert os.stat(out / "vda.raw").st_blocks <= os.stat(raw.path).st_blocks
    verified = virtbackup_in(state_dir, "--config", str(config), "verify", "--remote", name)
    assert verified.returncode == 0, verified.stderr
    listed = virtbackup_in(state_dir, "--config", str(config), "backups", "--remote", "--json")
    (row,) = json.loads(listed.stdout)["backups"]
    assert row["verified"]["ok"] is True and row["verified"]["problem"] is None
    assert not (local / "verified.json").exists()  # the local copy was not the one checked
    # a new host after a disaster: no virtbackup configuration, rclone's own config only
    elsewhere = virtbackup(
        "verify",
        "--remote-location",
        remote.remote.location,
        "--host",
        "host-a",
        name,
        state_dir=state_dir,
        env={"RCLONE_CONFIG": str(remote.remote.config)},
    )
    assert elsewhere.returncode == 0, elsewhere.stderr


def test_encrypted_stream_to_the_remote_only(
    domain_factory: DomainFactory,
    remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    raw = build_fs_image(domain_factory.workdir / "data.raw", content=3 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="only")
    config = offsite_config(
        tmp_path / "vb.toml", dest, remote, extra=f'encrypt = "{keys.recipients}"'
    )
    result = virtbackup_in(
        state_dir, "--config", str(config), "backup", dom.name(), "--remote-only", "--json"
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert (row["result"], row["offsite"]) == ("ok", "streamed")
    assert not (dest / dom.name()).exists() or not list((dest / dom.name()).iterdir())
    stamp = row["backup"].rsplit("/", 1)[1]
    path = f"host-a/{dom.name()}/{stamp}"
    assert sorted(remote_files(remote, path)) == [
        "domain.xml.age",
        "manifest.json",
        "manifest.json.age",
        "vda.raw.lz4.age",
    ]
    # the stock tools alone get the image back from the remote
    pipeline = (
        f"rclone --config {remote.remote.config} cat {remote.remote.path(path, 'vda.raw.lz4.age')}"
        f" | age -d -i {keys.identity} | lz4 -dc | cmp - {raw.path}"
    )
    subprocess.run(["sh", "-c", pipeline], check=True)

    out = tmp_path / "out"
    name = f"{dom.name()}/{stamp}"
    no_key = virtbackup_in(
        state_dir, "--config", str(config), "restore", "--remote", name, "--to", str(out)
    )
    assert no_key.returncode == 2 and "is encrypted" in no_key.stderr
    restored = virtbackup_in(
        state_dir,
        "--config",
        str(config),
        "restore",
        "--remote",
        name,
        "--to",
        str(out),
        "-i",
        str(keys.identity),
    )
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(raw.path), str(out / "vda.raw")], check=True)


def test_unreachable_remote_keeps_the_local_backup_and_the_next_run_catches_up(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    """The remote is down during the nightly run: every local backup is still made and
    kept, the summary says NOT offsite, exit 1; the next run uploads what is missing."""
    dom = domain_factory.create([DiskSpec("raw")], hint="down")
    config = offsite_config(
        tmp_path / "vb.toml", dest, sftp_remote, extra=f'include = ["{dom.name()}"]'
    )
    sftp_remote.stop()
    result = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert (row["result"], row["offsite"]) == ("failed", "failed")
    assert "not copied offsite" in row["message"]
    (local,) = (dest / dom.name()).iterdir()
    assert virtbackup_in(state_dir, "verify", str(local)).returncode == 0

    sftp_remote.start()
    time.sleep(1.1)  # a new stamp
    result = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert result.returncode == 0, result.stderr
    stamps = sorted(p.name for p in (dest / dom.name()).iterdir())
    assert len(stamps) == 2
    for stamp in stamps:
        assert "manifest.json" in remote_files(sftp_remote, f"host-a/{dom.name()}/{stamp}")


def test_killed_upload_resumes(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    data = dense_image(domain_factory.workdir / "dense.raw", 12 * MiB)
    dom = domain_factory.create([DiskSpec("raw", image=data)], hint="resume")
    slow = offsite_config(
        tmp_path / "slow.toml", dest, sftp_remote, extra=STREAMS, remote_extra='bwlimit = "1M"'
    )
    child = start_backup(state_dir, slow, dom.name())
    stream = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = (
            list((dest / dom.name()).glob("*/vda.raw.lz4")) if (dest / dom.name()).exists() else []
        )
        if found:
            stream = sftp_remote.local_path(
                f"host-a/{dom.name()}/{found[0].parent.name}/vda.raw.lz4"
            )
            if stream is not None and stream.exists() and stream.stat().st_size > 2 * MiB:
                break
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)  # the service stopped: virtbackup and its rclone
    child.wait()
    assert stream is not None and stream.exists(), "the upload never started"
    stamp = stream.parent.name
    assert "manifest.json" not in remote_files(sftp_remote, f"host-a/{dom.name()}/{stamp}")
    listed = virtbackup_in(state_dir, "--config", str(slow), "backups", "--remote", "--json")
    assert json.loads(listed.stdout)["backups"] == []  # an interrupted upload is not a backup

    fast = offsite_config(tmp_path / "fast.toml", dest, sftp_remote, extra=STREAMS)
    result = virtbackup_in(state_dir, "--config", str(fast), "backup", dom.name(), "--json")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    restored = virtbackup_in(
        state_dir,
        "--config",
        str(fast),
        "restore",
        "--remote",
        f"{dom.name()}/{stamp}",
        "--to",
        str(out),
    )
    assert restored.returncode == 0, restored.stderr
    subprocess.run(["cmp", str(data), str(out / "vda.raw")], check=True)


def test_remote_retention_keeps_the_newest_and_other_hosts_alone(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], hint="keep")
    other_dest = tmp_path / "other-dest"
    other_dest.mkdir()
    retention = f'include = ["{dom.name()}"]\n[retention]\nkeep_last = 1'
    config_a = offsite_config(tmp_path / "a.toml", dest, sftp_remote, "host-a", retention)
    config_b = offsite_config(tmp_path / "b.toml", other_dest, sftp_remote, "host-b", retention)
    assert virtbackup_in(state_dir, "--config", str(config_b), "all").returncode == 0
    (b_stamp,) = [p.name for p in (other_dest / dom.name()).iterdir()]
    # a leftover of an interrupted upload whose local copy is gone, on both hosts
    for host in ("host-a", "host-b"):
        rclone.write_text(
            sftp_remote.remote, f"{host}/{dom.name()}/20200101T000000Z/vda.raw.lz4", "x"
        )

    newest = ""
    for _ in range(3):
        result = virtbackup_in(state_dir, "--config", str(config_a), "all", "--json")
        assert result.returncode == 0, result.stderr
        newest = Path(json.loads(result.stdout)["domains"][0]["backup"]).name
        time.sleep(1.1)  # a new stamp each run
    a_remote = {e.path for e in rclone.list_entries(sftp_remote.remote, f"host-a/{dom.name()}")}
    assert a_remote == {newest}
    assert [p.name for p in (dest / dom.name()).iterdir()] == [newest]
    b_remote = {e.path for e in rclone.list_entries(sftp_remote.remote, f"host-b/{dom.name()}")}
    assert b_remote == {b_stamp, "20200101T000000Z"}  # host-b's run removes its own, not A's

    listed = virtbackup_in(
        state_dir, "--config", str(config_a), "backups", "--remote", "--host", "host-b", "--json"
    )
    assert [b["stamp"] for b in json.loads(listed.stdout)["backups"]] == [b_stamp]


def test_prune_remote_applies_retention_to_this_hosts_complete_copies(
    sftp_remote: RemoteServer, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    def put(host: str, domain: str, stamp: str, complete: bool = True) -> None:
        base = f"{host}/{domain}/{stamp}"
        rclone.write_text(sftp_remote.remote, f"{base}/vda.raw.lz4", "data")
        if complete:
            manifest = manifest_at(domain, stamp)
            rclone.write_text(sftp_remote.remote, f"{base}/manifest.json", manifest)

    stamps = ["20250101T010000Z", "20250102T010000Z", "20250103T010000Z"]
    for stamp in stamps:
        put("host-a", "web1", stamp)
        put("host-b", "web1", stamp)
    put("host-a", "db1", stamps[0])
    put("host-a", "web1", "20250104T010000Z", complete=False)  # an upload under way
    config = offsite_config(tmp_path / "a.toml", dest, sftp_remote, "host-a")

    def remote_stamps(host: str, domain: str) -> set[str]:
        return {e.path for e in rclone.list_entries(sftp_remote.remote, f"{host}/{domain}")}

    dry = virtbackup_in(
        state_dir, "--config", str(config), "prune", "--remote", "--keep-last", "1", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and "upload not complete" in dry.stdout
    assert remote_stamps("host-a", "web1") == {*stamps, "20250104T010000Z"}

    done = virtbackup_in(
        state_dir, "--config", str(config), "prune", "--remote", "--keep-last", "1", "--json"
    )
    assert done.returncode == 0, done.stderr
    decisions = {d["domain"]: d for d in json.loads(done.stdout)}
    assert decisions["web1"]["remove"] == [stamps[1], stamps[0]]
    assert decisions["web1"]["incomplete_kept"] == ["20250104T010000Z"]
    assert decisions["db1"]["remove"] == []  # the newest is always kept
    assert decisions["web1"]["where"].endswith("/host-a")
    assert remote_stamps("host-a", "web1") == {stamps[2], "20250104T010000Z"}
    assert remote_stamps("host-b", "web1") == set(stamps)  # another host's: untouched

    no_policy = virtbackup_in(state_dir, "--config", str(config), "prune", "--remote")
    assert no_policy.returncode == 2
    assert "no retention policy for" in no_policy.stderr


def test_a_remote_that_is_not_configured_stops_before_any_domain(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], hint="norem")
    config = offsite_config(tmp_path / "vb.toml", dest, sftp_remote)
    result = virtbackup_in(
        state_dir, "--config", str(config), "backup", dom.name(), "--remote", "nosuch:backups"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"virtbackup: error: remote nosuch: is not defined in {sftp_remote.remote.config}"
    ]
    assert not (dest / dom.name()).exists()
    only = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), "--remote-only")
    assert only.returncode == 2 and "--remote-only needs a remote" in only.stderr


def test_remote_only_to_a_dead_remote_fails_the_domain_in_one_line(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    libvirt: object,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    dom = domain_factory.create([DiskSpec("qcow2")], hint="deadonly", start=True)
    config = offsite_config(tmp_path / "vb.toml", dest, sftp_remote, remote_extra="only = true")
    sftp_remote.stop()
    result = virtbackup_in(state_dir, "--config", str(config), "backup", dom.name(), "--json")
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "failed" and "rclone" in row["message"]
    assert "\n" not in row["message"]
    assert not (dest / dom.name()).exists() or not list((dest / dom.name()).iterdir())
    # the domain is back on its own image, running
    assert dom.state()[0] == 1
    assert "virtbackup" not in dom.XMLDesc(0)


def test_doctor_checks_the_keys_and_the_remote(
    sftp_remote: RemoteServer, dest: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    config = offsite_config(
        tmp_path / "vb.toml", dest, sftp_remote, extra=f'encrypt = "{keys.recipients}"'
    )

    def doctor() -> dict[str, dict[str, str]]:
        argv = ["--config", str(config), "doctor", "--no-guestfs", "--dest", str(dest), "--json"]
        result = subprocess.run(
            [sys.executable, "-m", "virtbackup", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        document = json.loads(result.stdout)
        return {f["check"]: f for f in document["findings"] if f["check"] in ("encrypt", "remote")}

    found = doctor()
    assert (found["encrypt"]["severity"], found["remote"]["severity"]) == ("info", "info")
    sftp_remote.stop()
    keys.recipients.write_text("not a key\n")
    found = doctor()
    assert (found["encrypt"]["severity"], found["remote"]["severity"]) == ("blocker", "blocker")
