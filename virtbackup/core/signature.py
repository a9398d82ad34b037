"""Signed backups: which files carry a signature, and what a check of them concluded.

A signed backup holds, beside each of its metadata files, an OpenSSH signature
`NAME.sig` made with `ssh-keygen -Y sign -n virtbackup` and the host's signing key:

- unencrypted: `manifest.json` (every disk's digest) and `domain.xml`;
- encrypted: `manifest.json.age` and `domain.xml.age` (the ciphertext, so that a signature
  is checked without the age identity: the ciphertext fixes the cleartext) and the
  public `manifest.json`.

The disk streams need no signature of their own: the signed manifest holds their digests
and every read checks them. `verified.json` is local state written later by verify and
is never signed. Pure: the signing and checking is done by adapters/ssh_sign.py.
"""

from dataclasses import dataclass
from enum import StrEnum

from virtbackup.core.backup_errors import CorruptBackup

SIGNATURE_SUFFIX = ".sig"
MAX_SIGNATURE_SIZE = 64 * 1024  # an SSH signature is under 2 KiB even with an RSA key
NAMESPACE = "virtbackup"  # ssh-keygen -n: a signature made for virtbackup is for nothing else


class SignatureState(StrEnum):
    SIGNED = "signed"  # every metadata file has a good signature by an allowed signer
    UNSIGNED = "unsigned"  # no metadata file has a signature
    BAD = "bad"  # a signature does not match, is by an unknown key, or is missing
    UNCHECKED = "unchecked"  # signatures are there, but no allowed_signers to check them


@dataclass(frozen=True)
class SignatureCheck:
    state: SignatureState
    principal: str | None = None  # who signed (SIGNED)
    problem: str | None = None  # one line (BAD)

    def describe(self) -> str:
        if self.state == SignatureState.SIGNED:
            return f"signed by {self.principal}"
        if self.state == SignatureState.BAD:
            return f"BAD signature ({self.problem})"
        if self.state == SignatureState.UNCHECKED:
            return "signed (not checked: no allowed_signers)"
        return "unsigned"


class BadSignature(CorruptBackup):
    """A backup's signature does not hold: it may have been forged (exit 1)."""


class UnsignedBackup(CorruptBackup):
    """Signatures are expected (allowed_signers is set) and the backup has none."""


def signed_names(encrypted: bool) -> tuple[str, ...]:
    """The metadata files of a backup that carry a signature."""
    if encrypted:
        return ("manifest.json.age", "domain.xml.age", "manifest.json")
    return ("manifest.json", "domain.xml")


def signature_name(name: str) -> str:
    return name + SIGNATURE_SUFFIX


def require_trusted(
    check: SignatureCheck, label: str, expected: bool, allow_unsigned: bool
) -> None:
    """Raise unless the backup may be used: a bad signature never; an unsigned backup
    only when no signatures are expected or the user allowed it (--allow-unsigned)."""
    if check.state == SignatureState.BAD:
        raise BadSignature(f"backup {label} has a bad signature: {check.problem}")
    if check.state == SignatureState.UNSIGNED and expected and not allow_unsigned:
        raise UnsignedBackup(
            f"backup {label} is not signed, and allowed_signers expects signed backups",
            "add --allow-unsigned to use it anyway",
        )
