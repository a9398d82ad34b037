"""Real OpenSSH signing keys for the signature tests, made with the stock ssh-keygen."""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.real import unavailable


@dataclass(frozen=True)
class SigningKey:
    key: Path  # the private key (sign_key)
    public: Path
    allowed_signers: Path  # one line: PRINCIPAL namespaces="virtbackup" KEYTYPE KEY
    principal: str


def make_signing_key(directory: Path, principal: str = "kvm1") -> SigningKey:
    if shutil.which("ssh-keygen") is None:
        unavailable("ssh-keygen", "ssh-keygen is not installed (apt-get install openssh-client)")
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / f"{principal}-signing"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)],
        check=True,
        capture_output=True,
    )
    public = key.with_name(key.name + ".pub")
    allowed = directory / f"{principal}.allowed_signers"
    allowed.write_text(f'{principal} namespaces="virtbackup" {public.read_text().strip()}\n')
    return SigningKey(key, public, allowed, principal)
