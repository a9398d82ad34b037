"""`export --nbd` on backups written in process (no domain needed): the choice of disk,
and a server that dies under it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from backup_helpers import MiB, disk_of, make_backup
from harness.cli import NO_HOST_CONFIG, virtbackup
from repository_fixture import random_image


def test_a_backup_of_several_disks_needs_disk(tmp_path: Path) -> None:
    vda = random_image(tmp_path / "vda.raw", 2 * MiB, seed=1)
    vdb = random_image(tmp_path / "vdb.raw", 1 * MiB, seed=2)
    backup = make_backup(tmp_path / "dest", [disk_of(vda), disk_of(vdb, "vdb")]).path
    result = virtbackup("export", str(backup), "--nbd", str(tmp_path / "s"))
    assert result.returncode == 2
    assert result.stderr == (
        f"virtbackup: error: backup {backup} has the disks vda, vdb: choose one with --disk\n"
    )
    assert not os.path.lexists(tmp_path / "s")


def test_a_server_that_dies_ends_the_export_with_one_line(tmp_path: Path) -> None:
    vda = random_image(tmp_path / "vda.raw", 2 * MiB, seed=3)
    backup = make_backup(tmp_path / "dest", [disk_of(vda)]).path
    socket = tmp_path / "s"
    argv = [sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, "export", str(backup)]
    served = subprocess.Popen(
        [*argv, "--nbd", str(socket)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert served.stdout is not None
        assert served.stdout.readline().startswith("serving\tvda\t")
        found = subprocess.run(
            ["pgrep", "-P", str(served.pid), "nbdkit"], check=True, capture_output=True, text=True
        )
        os.kill(int(found.stdout.split()[0]), signal.SIGKILL)
        out, err = served.communicate(timeout=30)
    finally:
        if served.poll() is None:
            served.kill()
    assert (served.returncode, out) == (1, "")
    assert err == "virtbackup: error: nbdkit stopped serving (exit status -9)\n"
    assert sorted(os.listdir(tmp_path)) == ["dest", "vda.raw"]
