"""Signatures with the stock OpenSSH tool: `ssh-keygen -Y sign` and `-Y verify`.

The host signs with its private key (`sign_key`); a reader checks against an
allowed-signers file (`allowed_signers`, the format of ssh-keygen(1) ALLOWED SIGNERS:
`PRINCIPAL [namespaces="virtbackup"] KEYTYPE KEY`). The principal of a signature is found
with `-Y find-principals`, so a reader needs no other setting: any principal listed there
is trusted for every backup. Data passes through stdin, never argv.
"""

import os
import tempfile
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.core.errors import UsageError
from virtbackup.core.signature import NAMESPACE

PROGRAM = "ssh-keygen"


def sign(key: Path, data: bytes) -> bytes:
    """The armored signature of `data` by private key file `key`."""
    result = runner.run(
        [PROGRAM, "-q", "-Y", "sign", "-f", str(key), "-n", NAMESPACE], input=data, check=False
    )
    if result.returncode != 0 or not result.stdout:
        raise UsageError(
            f"ssh-keygen cannot sign with {key}: {_last_line(result.stderr)}",
            "give a readable private key without passphrase (ssh-keygen -t ed25519 -N '')",
        )
    return result.stdout


def check_key(key: Path) -> None:
    """UsageError in one line unless `key` can sign (checked before any domain is touched)."""
    if not key.is_file() or not os.access(key, os.R_OK):
        raise UsageError(
            f"signing key {key} cannot be read",
            "create one with ssh-keygen -t ed25519 -N '' -f FILE or fix sign_key",
        )
    sign(key, b"")


def check_allowed_signers(path: Path) -> None:
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UsageError(
            f"allowed signers file {path} cannot be read",
            "fix allowed_signers (one 'PRINCIPAL KEYTYPE KEY' line per signing host)",
        )


def signer_of(allowed_signers: Path, data: bytes, signature: bytes) -> str | None:
    """The principal whose good signature `signature` is over `data`; None when it is
    not one (wrong data, unknown key, damaged signature)."""
    with tempfile.TemporaryDirectory(prefix="virtbackup-sig-") as scratch:
        sig_file = Path(scratch) / "data.sig"
        sig_file.write_bytes(signature)
        found = runner.run(
            [PROGRAM, "-Y", "find-principals", "-s", str(sig_file), "-f", str(allowed_signers)],
            check=False,
        )
        principals = [p for p in found.stdout.decode(errors="replace").splitlines() if p]
        if found.returncode != 0 or not principals:
            return None
        for principal in principals:
            verified = runner.run(
                [
                    PROGRAM,
                    "-Y",
                    "verify",
                    "-f",
                    str(allowed_signers),
                    "-I",
                    principal,
                    "-n",
                    NAMESPACE,
                    "-s",
                    str(sig_file),
                ],
                input=data,
                check=False,
            )
            if verified.returncode == 0:
                return principal
    return None


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    meaningful = [line for line in lines if line and not line.startswith("Signing ")]
    return (meaningful or ["ssh-keygen failed"])[-1]
