"""Which files a signed backup signs, and when a signature check lets a backup be used."""

import pytest

from virtbackup.core.errors import ExitCode
from virtbackup.core.signature import (
    BadSignature,
    SignatureCheck,
    SignatureState,
    UnsignedBackup,
    require_trusted,
    signed_names,
)

SIGNED = SignatureCheck(SignatureState.SIGNED, principal="kvm1")
UNSIGNED = SignatureCheck(SignatureState.UNSIGNED)
BAD = SignatureCheck(SignatureState.BAD, problem="manifest.json does not match")
UNCHECKED = SignatureCheck(SignatureState.UNCHECKED)


def test_signed_names_cover_every_metadata_file() -> None:
    assert signed_names(encrypted=False) == ("manifest.json", "domain.xml")
    assert set(signed_names(encrypted=True)) == {
        "manifest.json",
        "manifest.json.age",
        "domain.xml.age",
    }


@pytest.mark.parametrize("check", [SIGNED, UNCHECKED, UNSIGNED])
@pytest.mark.parametrize("allow_unsigned", [False, True])
def test_usable_without_allowed_signers(check: SignatureCheck, allow_unsigned: bool) -> None:
    require_trusted(check, "b", expected=False, allow_unsigned=allow_unsigned)


@pytest.mark.parametrize("expected", [False, True])
@pytest.mark.parametrize("allow_unsigned", [False, True])
def test_a_bad_signature_is_never_accepted(expected: bool, allow_unsigned: bool) -> None:
    with pytest.raises(BadSignature) as raised:
        require_trusted(BAD, "DEST/web1/S", expected, allow_unsigned)
    assert raised.value.exit_code == ExitCode.FAILED
    assert str(raised.value) == (
        "backup DEST/web1/S has a bad signature: manifest.json does not match"
    )


def test_unsigned_needs_allow_unsigned_when_signatures_are_expected() -> None:
    with pytest.raises(UnsignedBackup, match="add --allow-unsigned") as raised:
        require_trusted(UNSIGNED, "b", expected=True, allow_unsigned=False)
    assert raised.value.exit_code == ExitCode.FAILED
    require_trusted(UNSIGNED, "b", expected=True, allow_unsigned=True)
    require_trusted(SIGNED, "b", expected=True, allow_unsigned=False)


@pytest.mark.parametrize(
    ("check", "text"),
    [
        (SIGNED, "signed by kvm1"),
        (UNSIGNED, "unsigned"),
        (BAD, "BAD signature (manifest.json does not match)"),
        (UNCHECKED, "signed (not checked: no allowed_signers)"),
    ],
)
def test_describe(check: SignatureCheck, text: str) -> None:
    assert check.describe() == text
