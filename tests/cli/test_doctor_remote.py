"""`doctor` looks at the remote repository on real S3 (moto): there or not yet, its
version, its secret when it holds encrypted chunks, and the remote's clock."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.cli import NO_HOST_CONFIG
from harness.remotes import RemoteServer
from offsite_helpers import offsite_config, remote_files

from virtbackup.adapters import rclone

DESCRIPTION = ".virtbackup-repository/repository.json"


def remote_findings(config: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """doctor's findings on the remote, with libvirtd out of reach (no domain to look at)."""
    socket = tmp_path / "no-libvirtd.sock"
    result = subprocess.run(
        [sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, "--config", str(config)]
        + ["--connect", f"qemu:///system?socket={socket}", "doctor", "--no-guestfs", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr  # libvirtd unreachable is a blocker
    findings = json.loads(result.stdout)["findings"]
    return {f["check"]: f for f in findings if f["check"].startswith("remote-")}


def test_doctor_checks_the_remote_repository_version_secret_and_clock(
    s3_remote: RemoteServer, dest: Path, tmp_path: Path
) -> None:
    config = offsite_config(tmp_path / "vb.toml", dest, s3_remote)
    empty = remote_findings(config, tmp_path)
    assert empty["remote-repository"]["severity"] == "info"
    assert "does not exist yet" in empty["remote-repository"]["text"]
    clock = empty["remote-clock"]
    assert clock["severity"] == "info" and "within 60 s" in clock["text"], clock
    assert remote_files(s3_remote, "") == {}  # the clock probe is gone again

    sealed = {"chunk_names": "hmac-sha256", "secret_id": "ab" * 32}
    description = {"format": "virtbackup-repository", "version": 2, "chunk_size": 4194304}
    rclone.write_text(
        s3_remote.remote,
        DESCRIPTION,
        json.dumps({**description, "chunk_names": "sha256", "sealed_chunks": sealed}),
    )
    secretless = remote_findings(config, tmp_path)
    assert secretless["remote-repository"]["severity"] == "info"
    assert "version 2" in secretless["remote-repository"]["text"]
    secret = secretless["remote-secret"]
    assert secret["severity"] == "blocker" and "no secret" in secret["text"], secret
    rclone.write_text(s3_remote.remote, ".virtbackup-repository/secrets/x.age", "sealed")
    assert "remote-secret" not in remote_findings(config, tmp_path)

    rclone.write_text(s3_remote.remote, DESCRIPTION, json.dumps({**description, "version": 99}))
    future = remote_findings(config, tmp_path)["remote-repository"]
    assert future["severity"] == "blocker" and "version 99" in future["text"], future
