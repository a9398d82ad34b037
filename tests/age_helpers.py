"""Real age key pairs for the encryption tests, made with the stock age-keygen."""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.real import unavailable


@dataclass(frozen=True)
class KeyPair:
    identity: Path  # the private key file (age -d -i)
    recipients: Path  # its public key, one line (age -R)
    public_key: str


def make_key_pair(directory: Path, name: str = "key") -> KeyPair:
    if shutil.which("age-keygen") is None or shutil.which("age") is None:
        unavailable("age", "age and age-keygen are not installed (apt-get install age)")
    directory.mkdir(parents=True, exist_ok=True)
    identity = directory / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    public_key = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    recipients = directory / f"{name}.pub"
    recipients.write_text(f"# backup key\n{public_key}\n")
    return KeyPair(identity, recipients, public_key)
