"""`virtbackup shrink`: usage errors, refusals and exit codes, and the interactive flow
driven through a pseudo-terminal (copy mode, whose output a real guest then boots)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from harness.cli import NO_HOST_CONFIG, virtbackup
from harness.guest import TinyGuestFactory
from harness.guestfs import HANG, fake_qemu, processes_running
from harness.images import build_fs_image
from harness.libvirtd import DiskSpec, DomainFactory

from virtbackup.cli.shrink_view import parse_choice

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compress", "--yes", "d"], "--compress needs copy mode"),
        (["--to", "/tmp", "--convert", "raw", "--compress", "--yes", "d"], "needs qcow2 output"),
        ([], "this is not a terminal: name the domains and pass --yes"),
        (["d"], "this is not a terminal"),
        (["--yes"], "--yes needs the domains to shrink: name them, or pass --all"),
        (["--convert", "vmdk", "--yes", "d"], "Invalid value for '--convert'"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = virtbackup("shrink", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_parse_choice() -> None:
    names = ["a", "b", "web1"]
    assert parse_choice("", names) == []
    assert parse_choice("all", names) == names
    assert parse_choice("3, 1", names) == ["web1", "a"]
    assert parse_choice("web1 2 web1", names) == ["web1", "b"]
    with pytest.raises(ValueError, match="'4' is not in the list"):
        parse_choice("4", names)
    with pytest.raises(ValueError, match="'nope'"):
        parse_choice("nope", names)


@pytest.mark.libvirt
def test_running_domain_is_refused_with_exit_1(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    running = domain_factory.create([DiskSpec("qcow2")], hint="run", start=True)
    result = virtbackup("shrink", "--yes", running.name(), state_dir=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{running.name()}: not shrunk: running: shut it down first, or pass --shutdown" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert "0 of 1 domains shrunk" in result.stdout
    assert running.isActive()
    as_json = virtbackup("shrink", "--yes", "--json", running.name(), state_dir=tmp_path)
    assert as_json.returncode == 1
    (document,) = json.loads(as_json.stdout)
    assert document["domain"] == running.name() and document["ok"] is False
    assert "pass --shutdown" in document["error"] and document["disks"] == []


@pytest.mark.libvirt
def test_unknown_domain_exit_2(tmp_path: Path) -> None:
    result = virtbackup("shrink", "--yes", "no-such-domain-xyz", state_dir=tmp_path)
    assert result.returncode == 2
    assert "unknown domain 'no-such-domain-xyz'" in result.stderr


@pytest.mark.guestfs
@pytest.mark.guest
@pytest.mark.libvirt
def test_interactive_copy_mode_boots_the_same_content(
    domain_factory: DomainFactory, tiny_guest: TinyGuestFactory, guestfs_works: None, tmp_path: Path
) -> None:
    workdir = domain_factory.workdir
    source = build_fs_image(
        workdir / "data.qcow2", size=64 * MiB, fmt="qcow2", content=8 * MiB, deleted=24 * MiB
    )
    source_size = os.stat(source.path).st_blocks * 512
    keep = domain_factory.create([DiskSpec("qcow2", image=source.path)], hint="keep")
    other = domain_factory.create([DiskSpec("raw", size=16 * MiB)], hint="other")
    out = workdir / "out"
    out.mkdir()
    env = dict(os.environ, VIRTBACKUP_STATE_DIR=str(tmp_path), COLUMNS="160")
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "virtbackup",
            *NO_HOST_CONFIG,
            "shrink",
            "--include",
            f"{domain_factory.name('*')}",
            "--to",
            str(out),
            "--compress",
            "--estimate",
        ],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 160),
    )
    transcript: list[str] = []
    child.logfile_read = _Collect(transcript)
    try:
        # --estimate launches the appliance first: as long as a launch may take.
        child.expect("Domains that can be shrunk", timeout=600)
        child.expect("Shrink which")
        child.sendline(f"{other.name()} {keep.name()}")
        child.expect(re.escape(other.name()) + r"\S* \(vda")
        child.sendline("n")
        child.expect(re.escape(keep.name()) + r"\S* \(vda")
        child.sendline("y")
        child.expect("domains shrunk", timeout=600)
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", "".join(transcript))
    assert child.exitstatus == 0, text
    assert "launching the appliance" in text
    assert "1 of 1 domains shrunk" in text
    # --estimate looked inside the domain worth it (about the 24 MiB deleted), not the other.
    assert "reclaimable (est.)" in text
    rows = {
        line.split("│")[2].strip(): line.split("│")
        for line in text.splitlines()
        if line.count("│") == 8
    }
    assert rows[keep.name()][7].strip().endswith("MiB"), rows
    assert rows[other.name()][7].strip() == "-", rows

    output = out / source.path.name
    assert output.is_file()
    assert not (out / f".{output.name}.virtbackup-partial").exists()
    assert [p.name for p in out.iterdir()] == [output.name]
    output_size = os.stat(output).st_blocks * 512
    assert output_size < source_size / 2, (output_size, source_size)
    assert os.stat(source.path).st_blocks * 512 == source_size  # the original is untouched
    assert keep.XMLDesc(0).count(str(source.path)) == 1  # and still the domain's disk
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(output)], check=True, capture_output=True
    )
    assert b'"format": "qcow2"' in info.stdout

    guest = tiny_guest("qcow2", image=output, hint="boot")
    code, listing = guest.exec("cd /mnt/data && sha256sum files/*")
    assert code == 0, listing
    booted = dict(reversed(line.split(maxsplit=1)) for line in listing.splitlines())
    assert booted == source.files


class _Collect:
    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def write(self, data: str) -> None:
        self.sink.append(data)

    def flush(self) -> None:
        pass


@pytest.mark.guestfs
@pytest.mark.libvirt
def test_hanging_appliance_gives_up_and_leaves_the_domain_as_it_was(
    domain_factory: DomainFactory, guestfs_works: None, tmp_path: Path
) -> None:
    """A launch that hangs (as qemu with a broken nested KVM does on some hosts) is
    killed after `appliance_timeout`: one line, exit 2, the image and the domain as
    they were, no process and no scratch file left."""
    dom = domain_factory.create([DiskSpec("qcow2")], hint="hang")
    image = Path(dom.XMLDesc().split("<source file='")[1].split("'")[0])
    before = image.read_bytes()
    config = tmp_path / "virtbackup.toml"
    config.write_text("appliance_timeout = 10\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    qemu = fake_qemu(tmp_path, HANG)
    env = {
        "LIBGUESTFS_HV": str(qemu),
        "LIBGUESTFS_TMPDIR": str(scratch),
        "XDG_RUNTIME_DIR": str(scratch),
    }
    result = virtbackup(
        "--config",
        str(config),
        "shrink",
        "--yes",
        dom.name(),
        state_dir=tmp_path / "state",
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
    assert "the libguestfs appliance did not start within 10 s" in line
    assert "raise appliance_timeout" in line
    assert "Traceback" not in result.stderr
    assert image.read_bytes() == before
    assert not dom.isActive()
    assert processes_running(qemu) == []
    assert list(scratch.iterdir()) == []


@pytest.mark.libvirt
def test_interactive_names_are_shown_as_text(domain_factory: DomainFactory, tmp_path: Path) -> None:
    """A legal domain name that looks like rich markup is shown as it is, in the table
    and in the question; answering no shrinks nothing (no appliance is launched)."""
    dom = domain_factory.create([DiskSpec("raw", size=4 * MiB)], hint="x[bold]y")
    env = dict(os.environ, VIRTBACKUP_STATE_DIR=str(tmp_path), COLUMNS="160")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "virtbackup", "shrink", "--include", domain_factory.name("x?bold?y")],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 160),
    )
    transcript: list[str] = []
    child.logfile_read = _Collect(transcript)
    try:
        child.expect("Shrink which")
        child.sendline("1")
        child.expect(re.escape(dom.name()) + r"\S* \(vda")  # (\S*: the end of bold)
        child.sendline("n")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", "".join(transcript))
    assert child.exitstatus == 0, text
    assert f"│ {dom.name()} " in text  # the table row
    assert "nothing shrunk" in text
