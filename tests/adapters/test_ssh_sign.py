"""ssh-keygen -Y sign/verify through the runner, with real keys."""

import subprocess
from pathlib import Path

import pytest
from signing_helpers import make_signing_key

from virtbackup.adapters import ssh_sign
from virtbackup.core.errors import ExitCode, UsageError


def test_sign_and_find_the_signer(tmp_path: Path) -> None:
    key = make_signing_key(tmp_path / "a", principal="kvm1")
    other = make_signing_key(tmp_path / "b", principal="kvm2")
    data = b'{"disks": []}\n'
    signature = ssh_sign.sign(key.key, data)
    assert signature.startswith(b"-----BEGIN SSH SIGNATURE-----")
    assert ssh_sign.signer_of(key.allowed_signers, data, signature) == "kvm1"
    assert ssh_sign.signer_of(key.allowed_signers, data + b" ", signature) is None
    assert ssh_sign.signer_of(other.allowed_signers, data, signature) is None  # unknown key
    assert ssh_sign.signer_of(key.allowed_signers, data, b"garbage") is None
    # a signature for another namespace (e.g. git's) is not one for virtbackup
    git_sig = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-f", str(key.key), "-n", "git"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    assert ssh_sign.signer_of(key.allowed_signers, data, git_sig) is None


def test_unusable_keys_are_one_line_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="signing key .* cannot be read") as missing:
        ssh_sign.check_key(tmp_path / "nope")
    assert missing.value.exit_code == ExitCode.USAGE
    locked = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "passphrase", "-f", str(locked)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(UsageError, match=f"ssh-keygen cannot sign with {locked}") as raised:
        ssh_sign.check_key(locked)
    assert "\n" not in str(raised.value)
    with pytest.raises(UsageError, match="allowed signers file .* cannot be read"):
        ssh_sign.check_allowed_signers(tmp_path / "nope")
