"""Many hosts share one remote repository on real S3 (moto): three hosts, each a process
of its own with `host = ...`, back up clones of one template while a fourth runs
`gc --remote` over and over with no grace; every backup verifies from the remote
afterwards, a gc killed between setting chunks aside and sweeping is settled by the next
run, and a host whose repository has other settings is refused."""

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from harness.cli import virtbackup_in
from harness.images import MiB
from harness.libvirtd import DiskSpec, DomainFactory
from harness.remotes import RemoteServer
from offsite_helpers import (
    backup,
    index_lines,
    offsite_config,
    start_backup,
    start_virtbackup,
)

from virtbackup.adapters import rclone

REPOSITORY = ".virtbackup-repository"
CHUNKS = f"{REPOSITORY}/chunks"
FOSSILS = f"{REPOSITORY}/fossils"
HOSTS = ("host-a", "host-b", "host-c")


def clone_image(path: Path, template: bytes) -> Path:
    """A disk cloned from `template`, with 4 MiB of its own after it."""
    path.write_bytes(template + os.urandom(4 * MiB))
    return path


def remote_stamps(state_dir: Path, config: Path) -> set[str]:
    listed = virtbackup_in(state_dir, "--config", str(config), "backups", "--remote", "--json")
    assert listed.returncode == 0, listed.stderr
    return {row["stamp"] for row in json.loads(listed.stdout)["backups"]}


def verify_remote(state_dir: Path, config: Path, name: str) -> subprocess.CompletedProcess[str]:
    return virtbackup_in(state_dir, "--config", str(config), "verify", "--remote", name)


def test_three_hosts_back_up_while_a_fourth_collects_garbage_and_every_backup_verifies(
    domain_factory: DomainFactory, s3_remote: RemoteServer, tmp_path: Path
) -> None:
    template = os.urandom(8 * MiB)  # two chunks every clone shares
    hosts = {}
    for host in HOSTS:
        home = tmp_path / host
        (home / "dest").mkdir(parents=True)
        image = clone_image(domain_factory.workdir / f"{host}.raw", template)
        dom = domain_factory.create([DiskSpec("raw", image=image)], hint=f"mh{host[-1]}")
        config = offsite_config(  # slow uploads: gc runs while their chunks go up
            home / "vb.toml", home / "dest", s3_remote, host=host, remote_extra='bwlimit = "4M"'
        )
        hosts[host] = (home / "state", config, dom.name())
    collector = offsite_config(
        tmp_path / "gc.toml", tmp_path / "gc-dest", s3_remote, host="host-d", extra="gc_grace = 0"
    )
    # Garbage for gc to find from its first run on, which host-a's cache still vouches
    # for and the clones of the others will find on the remote: host-a's first backup,
    # its remote copy gone.
    state_a, config_a, dom_a = hosts["host-a"]
    backup(state_a, config_a, dom_a, tmp_path / "first.log")
    rclone.purge(s3_remote.remote, "host-a")
    garbage = set(rclone.list_file_sizes(s3_remote.remote, CHUNKS))

    children = [start_backup(state, config, dom) for state, config, dom in hosts.values()]
    runs = []
    while any(child.poll() is None for child in children) or not runs:
        swept = virtbackup_in(
            tmp_path / "gc-state", "--config", str(collector), "gc", "--remote", "--json"
        )
        assert swept.returncode == 0, swept.stderr
        runs.append(json.loads(swept.stdout))
    assert [child.wait() for child in children] == [0, 0, 0]
    assert sum(run["removed"] + run["put_back"] for run in runs) >= len(garbage)

    def every_backup_verifies() -> set[str]:
        """The chunks the hosts' newest backups name, once each verifies from the remote."""
        named: set[str] = set()
        for state, config, dom in hosts.values():
            local = sorted((config.parent / "dest" / dom).iterdir())[-1]
            assert local.name in remote_stamps(state, config)
            verified = verify_remote(state, config, f"{dom}/{local.name}")
            assert verified.returncode == 0, verified.stderr
            named |= index_lines(local)
        assert rclone.list_entries(s3_remote.remote, FOSSILS) == []
        return named

    named = every_backup_verifies()
    assert named <= set(rclone.list_file_sizes(s3_remote.remote, CHUNKS))
    assert len(named) == 2 + 3  # the template's two chunks are shared

    # a gc killed with kill -9 as soon as it sets chunks aside, then run again
    litter = tmp_path / "litter"
    names = []
    for number in range(300):
        data = number.to_bytes(4, "big") * 256
        digest = hashlib.sha256(data).hexdigest()
        (litter / digest[:2]).mkdir(parents=True, exist_ok=True)
        (litter / digest[:2] / digest).write_bytes(data)
        names.append(f"{digest[:2]}/{digest}")
    rclone.copy_listed(s3_remote.remote, litter, CHUNKS, names, transfers=16)
    child = start_virtbackup(tmp_path / "gc-state", collector, "gc", "--remote")
    while child.poll() is None and not rclone.list_entries(s3_remote.remote, f"{FOSSILS}/host-d"):
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    again = virtbackup_in(tmp_path / "gc-state", "--config", str(collector), "gc", "--remote")
    assert again.returncode == 0, again.stderr
    assert set(rclone.list_file_sizes(s3_remote.remote, CHUNKS)) == named
    assert every_backup_verifies() == named

    # host-d's gc killed between steps 2 and 3, as a backup of host-b went up meanwhile:
    # one chunk host-b names is set aside, the sweep never ran.
    state_b, config_b, dom_b = hosts["host-b"]
    (local_b,) = (config_b.parent / "dest" / dom_b).iterdir()
    victim = sorted(index_lines(local_b))[0]
    run = f"{FOSSILS}/host-d/20250101T000000Z-1"
    rclone.copy_within(s3_remote.remote, REPOSITORY, run, [f"chunks/{victim}"], move=True)
    name_b = f"{dom_b}/{local_b.name}"
    broken = verify_remote(state_b, config_b, name_b)
    assert broken.returncode != 0 and victim.split("/")[1] in broken.stderr, broken.stderr
    settled = virtbackup_in(tmp_path / "gc-state", "--config", str(collector), "gc", "--remote")
    assert settled.returncode == 0, settled.stderr
    assert victim in rclone.list_file_sizes(s3_remote.remote, CHUNKS)
    assert rclone.list_entries(s3_remote.remote, FOSSILS) == []
    assert verify_remote(state_b, config_b, name_b).returncode == 0

    # a host whose repository cuts chunks of another size cannot mix them in
    description = rclone.read_text(s3_remote.remote, f"{REPOSITORY}/repository.json")
    other = json.dumps({**json.loads(description), "chunk_size": MiB})
    rclone.write_text(s3_remote.remote, f"{REPOSITORY}/repository.json", other)
    state_c, config_c, dom_c = hosts["host-c"]
    refused = virtbackup_in(state_c, "--config", str(config_c), "backup", dom_c)
    assert refused.returncode != 0 and "made with other settings" in refused.stderr, refused.stderr
    assert rclone.read_text(s3_remote.remote, f"{REPOSITORY}/repository.json") == other
    rclone.write_text(s3_remote.remote, f"{REPOSITORY}/repository.json", "not json")
    unreadable = virtbackup_in(state_c, "--config", str(config_c), "backup", dom_c)
    assert unreadable.returncode != 0, unreadable.stderr
    assert "is not a repository description" in unreadable.stderr, unreadable.stderr
