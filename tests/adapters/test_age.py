"""The age adapter against the stock age tool: recipients, round trips, clear errors."""

import logging
import subprocess
from pathlib import Path

import pytest
from age_helpers import make_key_pair

from virtbackup.adapters import age, runner
from virtbackup.core.backup_errors import CorruptBackup, DestinationFull
from virtbackup.core.errors import UsageError


def test_recipients_file_is_checked_by_age(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path)
    recipients = age.read_recipients(keys.recipients)
    assert recipients.keys == (keys.public_key,)
    assert recipients.file == keys.recipients

    bad = tmp_path / "bad.pub"
    bad.write_text("age1notakey\n")
    with pytest.raises(UsageError, match="age cannot encrypt to .*bad.pub"):
        age.read_recipients(bad)
    empty = tmp_path / "empty.pub"
    empty.write_text("# nothing here\n")
    with pytest.raises(UsageError, match="names no recipient"):
        age.read_recipients(empty)
    with pytest.raises(UsageError, match="cannot read age recipients file"):
        age.read_recipients(tmp_path / "missing.pub")


def test_bytes_round_trip_and_wrong_identity(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path, "right")
    other = make_key_pair(tmp_path, "other")
    sealed = age.encrypt_bytes(keys.recipients, b"secret manifest")
    assert sealed.startswith(b"age-encryption.org/v1")
    assert age.decrypt_bytes(keys.identity, sealed, "m.age") == b"secret manifest"
    # the stock tool reads it too
    stock = subprocess.run(
        ["age", "-d", "-i", str(keys.identity)], input=sealed, capture_output=True, check=True
    )
    assert stock.stdout == b"secret manifest"
    with pytest.raises(age.WrongIdentity, match="m.age: no key in identity file .*other.txt"):
        age.decrypt_bytes(other.identity, sealed, "m.age")
    with pytest.raises(CorruptBackup, match="m.age: age cannot decrypt it"):
        age.decrypt_bytes(keys.identity, sealed[:-5], "m.age")
    with pytest.raises(UsageError, match="cannot be read"):
        age.decrypt_bytes(tmp_path / "nope.txt", sealed, "m.age")


def test_streams_through_pipes(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path)
    payload = bytes(range(256)) * 40_000  # 10 MB, several age chunks
    target = tmp_path / "stream.age"
    with open(target, "wb") as out, age.encrypting(keys.recipients, out) as sink:
        for start in range(0, len(payload), 1 << 20):
            sink.write(payload[start : start + (1 << 20)])
    with open(target, "rb") as stored, age.decrypting(keys.identity, stored, "s") as clear:
        assert clear.read() == payload


def test_a_cut_stream_is_corrupt(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path)
    sealed = age.encrypt_bytes(keys.recipients, bytes(200_000))
    cut = tmp_path / "cut.age"
    cut.write_bytes(sealed[: len(sealed) // 2])
    with pytest.raises(CorruptBackup, match="cut.age: age cannot decrypt it"):
        with open(cut, "rb") as stored, age.decrypting(keys.identity, stored, "cut.age") as clear:
            clear.read()


def test_full_destination_is_named_as_such(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path)
    with pytest.raises(DestinationFull, match="no space left"):
        with open("/dev/full", "wb") as out, age.encrypting(keys.recipients, out) as sink:
            sink.write(bytes(1 << 20))


def test_keys_never_reach_argv_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keys = make_key_pair(tmp_path)
    secret = next(
        line for line in keys.identity.read_text().splitlines() if line.startswith("AGE-SECRET")
    )
    seen: list[list[str]] = []
    real_run, real_spawn = runner.run, runner.spawn
    monkeypatch.setattr(runner, "run", lambda argv, **kw: seen.append(argv) or real_run(argv, **kw))
    monkeypatch.setattr(
        runner, "spawn", lambda argv, **kw: seen.append(argv) or real_spawn(argv, **kw)
    )
    caplog.set_level(logging.DEBUG)
    sealed = age.encrypt_bytes(age.read_recipients(keys.recipients).file, b"x")
    age.decrypt_bytes(keys.identity, sealed, "x")
    stored = tmp_path / "x.age"
    stored.write_bytes(sealed)
    with open(stored, "rb") as source, age.decrypting(keys.identity, source, "x") as clear:
        clear.read()
    assert seen
    for argv in seen:
        assert secret not in " ".join(argv) and keys.public_key not in " ".join(argv)
    assert secret not in caplog.text
