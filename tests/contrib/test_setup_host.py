"""contrib/setup-host.sh makes a working installation, and running it again is harmless."""

import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "contrib" / "setup-host.sh"


def setup(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        VIRTBACKUP_VENV=str(tmp_path / "venv"),
        VIRTBACKUP_BIN_DIR=str(tmp_path / "bin"),
        VIRTBACKUP_DEST=str(tmp_path / "backups"),
    )
    return subprocess.run(
        [str(SCRIPT), *args], env=env, check=False, capture_output=True, text=True, timeout=900
    )


def test_setup_installs_a_working_command_and_is_idempotent(tmp_path: Path) -> None:
    first = setup(tmp_path)
    assert first.returncode == 0, first.stderr
    command = tmp_path / "bin" / "virtbackup"
    assert command.resolve() == tmp_path / "venv" / "bin" / "virtbackup"
    version = subprocess.run(
        [str(command), "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.startswith("virtbackup, version ")
    # the venv sees the distribution's bindings, which are not on PyPI
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(python), "-c", "import libvirt, guestfs, lz4.frame"], check=True)

    assert stat.S_IMODE((tmp_path / "backups").stat().st_mode) == 0o700

    again = setup(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stdout  # every package is there already
    assert "creating" not in again.stdout
    # libvirtd answers after the script, started by it or before it
    subprocess.run(["virsh", "-c", "qemu:///system", "version"], check=True, capture_output=True)


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    result = setup(tmp_path, "--frobnicate")
    assert result.returncode == 2
    assert "unknown option --frobnicate" in result.stderr
