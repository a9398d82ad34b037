"""Configuration and listings for the tests of offsite copies."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.cli import virtbackup_in
from harness.remotes import RemoteServer

from virtbackup.adapters import rclone


def offsite_config(
    path: Path,
    dest: Path,
    remote: RemoteServer,
    host: str = "host-a",
    extra: str = "",
    remote_extra: str = "",
) -> Path:
    """A config file: DEST, `extra` top-level lines, then [remote] (+ `remote_extra`)."""
    path.write_text(
        f'dest = "{dest}"\n{extra}\n'
        f'[remote]\nlocation = "{remote.remote.location}"\n'
        f'rclone_config = "{remote.remote.config}"\nhost = "{host}"\nretries = 1\n'
        f"{remote_extra}\n"
    )
    return path


def remote_files(remote: RemoteServer, path: str) -> dict[str, int]:
    return {e.path: e.size for e in rclone.list_entries(remote.remote, path) if not e.is_dir}


def dense_image(path: Path, size: int) -> Path:
    """An image of `size` random bytes: incompressible, so an upload of it takes time."""
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


def start_backup(state_dir: Path, config: Path, domain: str) -> subprocess.Popen[bytes]:
    """`virtbackup backup DOMAIN` in a session of its own, to be killed with its rclone."""
    return start_virtbackup(state_dir, config, "backup", domain)


def start_virtbackup(state_dir: Path, config: Path, *args: str) -> subprocess.Popen[bytes]:
    """`virtbackup ARGS` in a session of its own, to be killed with its rclone."""
    return subprocess.Popen(
        [sys.executable, "-m", "virtbackup", "--config", str(config), *args],
        env={**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for_upload(
    remote: RemoteServer, directory: str, child: subprocess.Popen[bytes], amount: int
) -> None:
    """Until `amount` bytes of files are below `directory` on the (SFTP) server, the
    upload of `child` under way."""
    where = remote.local_path(directory)
    assert where is not None
    deadline = time.monotonic() + 120
    while sum(p.stat().st_size for p in where.glob("*/*")) < amount:
        assert time.monotonic() < deadline and child.poll() is None, "no upload seen"
        time.sleep(0.1)


def backup(state_dir: Path, config: Path, domain: str, log: Path) -> Path:
    """One backup with its offsite copy; the local backup directory."""
    result = virtbackup_in(
        state_dir, "--config", str(config), "-v", "--log-file", str(log), "backup", domain, "--json"
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert (row["result"], row["offsite"]) == ("ok", "copied"), row
    return Path(row["backup"])


def index_lines(backup_dir: Path) -> set[str]:
    return set((backup_dir / "vda.raw.idx").read_text().split())
