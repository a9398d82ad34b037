"""Signed backups through the CLI, with real keys made by the stock ssh-keygen and real
backups of real libvirt domains: signed, forged, unsigned and offsite copies, the
README's stock-tool command, and graphics passwords kept out of unencrypted backups."""

import json
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from age_helpers import make_key_pair
from harness.cli import virtbackup, virtbackup_in
from harness.images import MiB, build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory
from harness.remotes import RemoteServer
from signing_helpers import SigningKey, make_signing_key

from virtbackup.adapters import rclone

README = Path(__file__).resolve().parents[2] / "README.md"


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` and its bytes (empty when `path` does not exist)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def back_up(
    factory: DomainFactory, state_dir: Path, dest: Path, hint: str, *extra: str
) -> tuple[Path, Path]:
    """A backup made by the CLI of a new shut-off domain; (backup dir, source image)."""
    raw = build_fs_image(factory.workdir / f"{hint}.raw", content=2 * MiB, deleted=MiB)
    dom = factory.create([DiskSpec("raw", image=raw.path)], hint=hint)
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), *extra, "--json")
    assert result.returncode == 0, result.stderr
    return Path(json.loads(result.stdout)["domains"][0]["backup"]), raw.path


def signers_config(path: Path, key: SigningKey, extra: str = "") -> Path:
    path.write_text(f'allowed_signers = "{key.allowed_signers}"\n{extra}')
    return path


def readme_verify_command(key: SigningKey) -> tuple[list[str], str]:
    """The README's stock-tool command (argv and the file it reads from stdin), with this
    test's allowed-signers file and principal in place of the example's."""
    (line,) = [
        ln for ln in README.read_text().splitlines() if ln.startswith("ssh-keygen -Y verify")
    ]
    words = shlex.split(line)
    stdin_file = words[words.index("<") + 1]
    argv = words[: words.index("<")]
    argv[argv.index("-f") + 1] = str(key.allowed_signers)
    argv[argv.index("-I") + 1] = key.principal
    return argv, stdin_file


def test_signed_backup_verifies_lists_and_restores(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    key = make_signing_key(tmp_path / "keys")
    backup, image = back_up(domain_factory, state_dir, dest, "signed", "--sign-key", str(key.key))
    assert sorted(p.name for p in backup.iterdir()) == [
        "domain.xml",
        "domain.xml.sig",
        "manifest.json",
        "manifest.json.sig",
        "vda.raw.idx",  # the default layout: the manifest signed binds the index
    ]
    config = signers_config(tmp_path / "vb.toml", key)

    verified = virtbackup_in(state_dir, "--config", str(config), "verify", str(backup))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == f"ok\t{backup}\tsigned by kvm1\n"
    # without allowed_signers the signature is there but cannot be judged
    unchecked = virtbackup_in(state_dir, "verify", str(backup))
    assert unchecked.stdout == f"ok\t{backup}\tsigned (not checked: no allowed_signers)\n"

    listed = virtbackup(
        "--config", str(config), "backups", "--dest", str(dest), env={"COLUMNS": "200"}
    )
    assert listed.returncode == 0 and "│ signed (kvm1) │" in listed.stdout
    as_json = virtbackup_in(
        state_dir,
        "backups",
        "--dest",
        str(dest),
        "--json",
        "--allowed-signers",
        str(key.allowed_signers),
    )
    (entry,) = json.loads(as_json.stdout)["backups"]
    assert entry["signature"] == {"state": "signed", "principal": "kvm1", "problem": None}

    out = tmp_path / "out"
    restored = virtbackup_in(
        state_dir, "--config", str(config), "restore", str(backup), "--to", str(out)
    )
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.splitlines()[0] == "signature\tsigned by kvm1"
    assert (out / "vda.raw").read_bytes() == image.read_bytes()

    # the README's command, as written there, verifies with the stock tool alone
    argv, stdin_file = readme_verify_command(key)
    with open(backup / stdin_file, "rb") as data:
        stock = subprocess.run(
            argv, stdin=data, cwd=backup, capture_output=True, text=True, check=False
        )
    assert stock.returncode == 0, stock.stderr
    assert 'Good "virtbackup" signature for kvm1' in stock.stdout + stock.stderr


def test_forged_manifest_is_bad_and_restore_writes_nothing(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    key = make_signing_key(tmp_path / "keys")
    backup, _image = back_up(domain_factory, state_dir, dest, "forged", "--sign-key", str(key.key))
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["disks"][0]["digest"] = "0" * 64  # as if the stream had been replaced
    (backup / "manifest.json").write_text(json.dumps(manifest, indent=2))
    config = signers_config(tmp_path / "vb.toml", key)

    verified = virtbackup_in(state_dir, "--config", str(config), "verify", str(backup))
    assert verified.returncode == 1
    assert verified.stdout == ""
    assert verified.stderr.strip().splitlines() == [
        f"virtbackup: error: {backup}: backup {backup} has a bad signature: manifest.json "
        f"does not match manifest.json.sig, or no key of {key.allowed_signers} made it"
    ]
    assert json.loads((backup / "verified.json").read_text())["ok"] is False

    # a key that allowed_signers does not list is as bad as a changed file
    stranger = make_signing_key(tmp_path / "stranger", principal="intruder")
    (backup / "manifest.json.sig").write_bytes(
        subprocess.run(
            ["ssh-keygen", "-Y", "sign", "-f", str(stranger.key), "-n", "virtbackup"],
            input=(backup / "manifest.json").read_bytes(),
            capture_output=True,
            check=True,
        ).stdout
    )
    before = tree(tmp_path)
    out = tmp_path / "out"
    restored = virtbackup_in(
        state_dir, "--config", str(config), "restore", str(backup), "--to", str(out)
    )
    assert restored.returncode == 1
    assert len(restored.stderr.strip().splitlines()) == 1
    assert "has a bad signature: manifest.json does not match" in restored.stderr
    assert "Traceback" not in restored.stderr
    assert tree(tmp_path) == before and not out.exists()

    listed = virtbackup_in(
        state_dir, "--config", str(config), "backups", "--dest", str(dest), "--json"
    )
    (entry,) = json.loads(listed.stdout)["backups"]
    assert entry["signature"]["state"] == "bad"

    # removing the signatures does not help once allowed_signers expects them ...
    for sig in backup.glob("*.sig"):
        sig.unlink()
    unsigned = virtbackup_in(
        state_dir, "--config", str(config), "restore", str(backup), "--to", str(out)
    )
    assert unsigned.returncode == 1 and not out.exists()
    # ... and removing one of two is a bad signature, with or without allowed_signers
    backup2, _ = back_up(domain_factory, state_dir, dest, "halfsig", "--sign-key", str(key.key))
    (backup2 / "domain.xml.sig").unlink()
    half = virtbackup_in(state_dir, "verify", str(backup2))
    assert half.returncode == 1
    assert "domain.xml has no signature, though manifest.json has one" in half.stderr


def test_domain_xml_of_another_signed_backup_is_refused(
    domain_factory: DomainFactory,
    libvirt_conn: Any,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    """domain.xml and its signature copied from another backup signed by the same key:
    the signature holds, the manifest's record of the domain XML does not."""
    key = make_signing_key(tmp_path / "keys")
    ours, _ = back_up(domain_factory, state_dir, dest, "ours", "--sign-key", str(key.key))
    theirs, _ = back_up(domain_factory, state_dir, dest, "theirs", "--sign-key", str(key.key))
    assert (ours / "domain.xml").read_bytes() != (theirs / "domain.xml").read_bytes()
    for name in ("domain.xml", "domain.xml.sig"):
        shutil.copyfile(theirs / name, ours / name)
    config = signers_config(tmp_path / "vb.toml", key)
    problem = f"{ours}/domain.xml is not the domain XML its manifest records (replaced or damaged)"

    verified = virtbackup_in(state_dir, "--config", str(config), "verify", str(ours))
    assert verified.returncode == 1
    assert verified.stdout == ""
    assert verified.stderr.strip().splitlines() == [f"virtbackup: error: {ours}: {problem}"]
    assert json.loads((ours / "verified.json").read_text())["ok"] is False

    before = tree(tmp_path)
    out = tmp_path / "out"
    name = f"vbtest-{uuid.uuid4().hex[:8]}-swapped"
    restored = virtbackup_in(
        state_dir, "--config", str(config), "restore", str(ours), "--to", str(out),
        "--define", name,
    )  # fmt: skip
    assert restored.returncode == 1
    assert restored.stderr.strip().splitlines() == [f"virtbackup: error: {problem}"]
    assert tree(tmp_path) == before and not out.exists()
    assert name not in [d.name() for d in libvirt_conn.listAllDomains()]
    # the backup it came from is as good as it was
    intact = virtbackup_in(state_dir, "--config", str(config), "verify", str(theirs))
    assert intact.returncode == 0, intact.stderr


def test_unsigned_backup_where_signatures_are_expected(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    key = make_signing_key(tmp_path / "keys")
    backup, image = back_up(domain_factory, state_dir, dest, "unsigned")
    assert not list(backup.glob("*.sig"))
    config = signers_config(tmp_path / "vb.toml", key)
    message = (
        f"virtbackup: error: backup {backup} is not signed, and allowed_signers expects "
        "signed backups: add --allow-unsigned to use it anyway"
    )

    refused = virtbackup_in(state_dir, "--config", str(config), "verify", str(backup))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [message]
    assert not (backup / "verified.json").exists()

    before = tree(tmp_path)
    out = tmp_path / "out"
    refused = virtbackup_in(
        state_dir, "--config", str(config), "restore", str(backup), "--to", str(out)
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [message]
    assert tree(tmp_path) == before

    allowed = virtbackup_in(
        state_dir, "--config", str(config), "verify", "--allow-unsigned", str(backup)
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == f"ok\t{backup}\tunsigned\n"
    restored = virtbackup_in(
        state_dir,
        "--config",
        str(config),
        "restore",
        str(backup),
        "--to",
        str(out),
        "--allow-unsigned",
    )
    assert restored.returncode == 0, restored.stderr
    assert (out / "vda.raw").read_bytes() == image.read_bytes()

    # an unreadable signing key stops the run before any domain is touched
    bad_key = virtbackup_in(
        state_dir, "backup", "nosuchdomain", "--dest", str(dest), "--sign-key", str(tmp_path / "no")
    )
    assert bad_key.returncode == 2
    assert f"signing key {tmp_path / 'no'} cannot be read" in bad_key.stderr


def test_encrypted_signed_backup_offsite(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    key = make_signing_key(tmp_path / "keys")
    age_keys = make_key_pair(tmp_path / "age")
    config = tmp_path / "vb.toml"
    config.write_text(
        f'dest = "{dest}"\nsign_key = "{key.key}"\nallowed_signers = "{key.allowed_signers}"\n'
        f'encrypt = "{age_keys.recipients}"\n'
        f'[remote]\nlocation = "{sftp_remote.remote.location}"\n'
        f'rclone_config = "{sftp_remote.remote.config}"\nhost = "host-a"\nretries = 1\n'
    )
    raw = build_fs_image(domain_factory.workdir / "off.raw", content=2 * MiB, deleted=MiB)
    dom = domain_factory.create([DiskSpec("raw", image=raw.path)], hint="sigoff")
    result = virtbackup_in(state_dir, "--config", str(config), "backup", dom.name(), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["offsite"] == "copied"
    local = Path(row["backup"])
    signatures = ["domain.xml.age.sig", "manifest.json.age.sig", "manifest.json.sig"]
    assert sorted(p.name for p in local.glob("*.sig")) == signatures
    remote_path = f"host-a/{dom.name()}/{local.name}"
    on_remote = {
        e.path: e.size for e in rclone.list_entries(sftp_remote.remote, remote_path) if not e.is_dir
    }
    assert on_remote == {p.name: p.stat().st_size for p in local.iterdir()}

    # the signature is checked without the age identity ...
    listed = virtbackup_in(state_dir, "--config", str(config), "backups", "--remote", "--json")
    (entry,) = json.loads(listed.stdout)["backups"]
    assert entry["signature"] == {"state": "signed", "principal": "kvm1", "problem": None}
    # ... and verify --remote checks it and every digest with it
    name = f"{dom.name()}/{local.name}"
    verified = virtbackup_in(
        state_dir, "--config", str(config), "verify", "--remote", name, "-i", str(age_keys.identity)
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == f"ok\t{sftp_remote.remote.location}/{remote_path}\tsigned by kvm1\n"

    # streamed straight to the remote, the signatures go there too
    streamed = virtbackup_in(
        state_dir, "--config", str(config), "backup", dom.name(), "--remote-only", "--json"
    )
    assert streamed.returncode == 0, streamed.stderr
    (row,) = json.loads(streamed.stdout)["domains"]
    stamp = str(row["backup"]).rstrip("/").rsplit("/", 1)[-1]
    assert stamp != local.name
    sent = rclone.list_entries(sftp_remote.remote, f"host-a/{dom.name()}/{stamp}")
    assert sorted(e.path for e in sent if e.path.endswith(".sig")) == signatures
    checked = virtbackup_in(
        state_dir,
        "--config",
        str(config),
        "verify",
        "--remote",
        f"{dom.name()}/{stamp}",
        "-i",
        str(age_keys.identity),
    )
    assert checked.returncode == 0 and checked.stdout.endswith("\tsigned by kvm1\n")

    # a forged sealed manifest on the remote (made with the public recipients only)
    forged = subprocess.run(
        ["age", "-R", str(age_keys.recipients)], input=b"{}", capture_output=True, check=True
    ).stdout
    (tmp_path / "forged.age").write_bytes(forged)
    rclone.copy_file(
        sftp_remote.remote, tmp_path / "forged.age", f"{remote_path}/manifest.json.age"
    )
    out = tmp_path / "out"
    restored = virtbackup_in(
        state_dir,
        "--config",
        str(config),
        "restore",
        "--remote",
        name,
        "--to",
        str(out),
        "-i",
        str(age_keys.identity),
    )
    assert restored.returncode == 1
    assert "has a bad signature: manifest.json.age does not match" in restored.stderr
    assert len(restored.stderr.strip().splitlines()) == 1 and not out.exists()

    # item 14: a wrong identity is a usage error (2) naming the keys that open it
    stranger = make_key_pair(tmp_path / "stranger")
    wrong = virtbackup_in(
        state_dir, "--config", str(config), "verify", str(local), "-i", str(stranger.identity)
    )
    assert wrong.returncode == 2
    (line,) = wrong.stderr.strip().splitlines()
    assert "no key in identity file" in line
    recipient = json.loads((local / "manifest.json").read_text())["encryption"]["recipients"][0]
    assert recipient in line
    missing = virtbackup_in(state_dir, "--config", str(config), "verify", str(local))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"virtbackup: error: backup {local} is encrypted: give --identity FILE "
        f"(an age identity of one of its recipients: {recipient})"
    ]


def test_graphics_password_is_not_stored_unencrypted(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    password = "Vn9x!q2Z"
    graphics = f"<graphics type='vnc' port='-1' autoport='yes' passwd='{password}'/>"
    dom = domain_factory.create([DiskSpec("raw")], hint="vncpw", devices_xml=graphics)
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert any("vnc graphics password left out" in w for w in row["warnings"])
    backup = Path(row["backup"])
    stored = (backup / "domain.xml").read_text()
    assert password not in stored and "<graphics type='vnc'" in stored
    assert all(password.encode() not in data for data in tree(dest).values())

    config = tmp_path / "vb.toml"
    config.write_text(f'dest = "{dest}"\nsign_key = "{tmp_path / "no-key"}"\n')
    doctor = virtbackup_in(
        state_dir, "--config", str(config), "doctor", dom.name(), "--no-guestfs", "--json"
    )
    findings = json.loads(doctor.stdout)["findings"]
    (secret,) = [f for f in findings if f["check"] == "secrets"]
    assert secret["severity"] == "warning" and "vnc graphics password" in secret["text"]
    (sign,) = [f for f in findings if f["check"] == "sign"]
    assert sign["severity"] == "blocker" and "cannot be read" in sign["text"]
    assert doctor.returncode == 1

    # encrypted, the password stays in domain.xml.age
    age_keys = make_key_pair(tmp_path / "age")
    sealed = virtbackup_in(
        state_dir,
        "backup",
        dom.name(),
        "--dest",
        str(dest),
        "--encrypt",
        str(age_keys.recipients),
        "--json",
    )
    assert sealed.returncode == 0, sealed.stderr
    sealed_dir = Path(json.loads(sealed.stdout)["domains"][0]["backup"])
    clear = subprocess.run(
        ["age", "-d", "-i", str(age_keys.identity), str(sealed_dir / "domain.xml.age")],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    assert f"passwd='{password}'" in clear
