"""`virtbackup list`: the table, the JSON schema, and the one-line errors."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.cli import NO_HOST_CONFIG, virtbackup
from harness.libvirtd import DiskSpec, DomainFactory
from harness.real import unavailable

from virtbackup import __file__ as package_init

MiB = 1024 * 1024

DOMAIN_KEYS = {"name", "uuid", "state", "persistent", "method", "reason", "disks"}
DISK_KEYS = {
    "target",
    "device",
    "type",
    "path",
    "format",
    "virtual_size",
    "allocated",
    "backing_chain",
    "readonly",
    "shareable",
    "backup",
    "reason",
    "incremental",
    "incremental_reason",
    "incremental_fix",
}


def list_json(*args: str) -> dict[str, Any]:
    result = virtbackup("list", "--json", *args)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.mark.libvirt
def test_json_schema(domain_factory: DomainFactory) -> None:
    running = domain_factory.create(
        [DiskSpec("qcow2", size=4 * MiB), DiskSpec("cdrom", size=MiB), DiskSpec("chain", size=MiB)],
        hint="run",
        start=True,
    )
    stopped = domain_factory.create([DiskSpec("raw", size=2 * MiB)], hint="off")
    document = list_json(running.name(), stopped.name())
    assert document["version"] == 1
    assert document["uri"] == "qemu:///system"
    first, second = document["domains"]
    assert DOMAIN_KEYS <= set(first) and DOMAIN_KEYS <= set(second)
    assert (first["name"], first["uuid"]) == (running.name(), running.UUIDString())
    # without --layout, the layout `backup` writes: the repository, so the backup API
    assert (first["state"], first["method"], first["persistent"]) == ("running", "backup-api", True)
    assert first["reason"].startswith("auto: running")
    assert (second["state"], second["method"]) == ("shut off", "offline")

    disks = {disk["target"]: disk for disk in first["disks"]}
    for disk in disks.values():
        assert DISK_KEYS <= set(disk)
    vda = disks["vda"]
    assert (vda["device"], vda["type"], vda["format"]) == ("disk", "file", "qcow2")
    assert vda["path"].endswith("run-disk0.qcow2")
    assert vda["virtual_size"] == 4 * MiB and isinstance(vda["allocated"], int)
    assert (vda["backup"], vda["backing_chain"]) == (True, [])
    cdrom = disks["hdd"]
    assert (cdrom["device"], cdrom["backup"], cdrom["reason"]) == (
        "cdrom",
        False,
        "removable media (cdrom)",
    )
    assert disks["vdc"]["backing_chain"][0].endswith("run-disk2-base.raw")
    [raw] = second["disks"]
    assert (raw["virtual_size"], raw["backup"]) == (2 * MiB, True)
    # which disks get incremental reads, and how the others would
    assert vda["incremental"] is True and "libvirt's backup API" in vda["incremental_reason"]
    assert raw["incremental"] is False
    assert raw["incremental_reason"].startswith("a raw image tracks no changes")
    assert "qemu-img convert -O qcow2 -o compat=1.1" in raw["incremental_fix"]
    assert cdrom["incremental"] is False


@pytest.mark.libvirt
def test_method_option_previews_a_plan(domain_factory: DomainFactory) -> None:
    dom = domain_factory.create([DiskSpec("raw", size=MiB)], hint="m", start=True)
    [domain] = list_json("--method", "offline", dom.name())["domains"]
    assert domain["method"] is None
    assert "offline needs a shut-off domain" in domain["reason"]
    assert domain["disks"][0]["backup"] is False


@pytest.mark.libvirt
def test_table_names_with_spaces_and_unicode(domain_factory: DomainFactory) -> None:
    name = f"vbtest-{domain_factory.tag} Ärger [bold red]spaß"
    image = domain_factory.blank_image("Platte ü.raw", "raw", MiB)
    domain_factory.create([DiskSpec("raw", image=image)], name=name)
    wide = {**os.environ, "COLUMNS": "250"}  # nothing folds
    result = virtbackup("list", name, env=wide)
    assert result.returncode == 0, result.stderr
    assert name in result.stdout  # rich markup in a name is shown, not interpreted
    assert str(image) in result.stdout
    assert "offline" in result.stdout
    assert "1 of 1 domains, 1 disks would be backed up" in result.stdout
    [domain] = list_json(name)["domains"]
    assert domain["name"] == name and domain["disks"][0]["path"] == str(image)


@pytest.mark.libvirt
def test_unknown_domain_lists_close_matches(domain_factory: DomainFactory) -> None:
    dom = domain_factory.create([DiskSpec("raw", size=MiB)], hint="close")
    result = virtbackup("list", dom.name() + "x")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("virtbackup: error: unknown domain ")
    assert f"did you mean '{dom.name()}'" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.libvirt
def test_include_and_exclude(domain_factory: DomainFactory) -> None:
    a = domain_factory.create([DiskSpec("raw", size=MiB)], hint="inc-a")
    domain_factory.create([DiskSpec("raw", size=MiB)], hint="inc-b")
    pattern = f"vbtest-{domain_factory.tag}-inc-*"
    document = list_json("--include", pattern, "--exclude", "*-b")
    assert [d["name"] for d in document["domains"]] == [a.name()]
    nothing = virtbackup("list", "--include", f"vbtest-{domain_factory.tag}-none-*")
    assert nothing.returncode == 0
    assert "no domains on qemu:///system" in nothing.stdout


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("foo:///system", "no connection driver available"),
        ("qemu+unix:///system?socket=/nonexistent/sock", "is libvirtd running?"),
        ("qemu+ssh://vbtest.invalid/system", "check that the host is reachable"),
    ],
)
def test_bad_uri_is_one_line_exit_2(uri: str, says: str) -> None:
    result = virtbackup("--connect", uri, "list")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"virtbackup: error: cannot connect to {uri}: ")
    assert says in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert virtbackup("-c", uri, "list", "--json").returncode == 2


@pytest.fixture
def readable_by_all() -> Iterator[Path]:
    """A copy of the package that any user can import: the checkout may lie where other
    users cannot reach it (under /root, or in pytest's 0700 folders)."""
    root = Path(tempfile.mkdtemp(prefix="vbtest-pkg-"))
    try:
        shutil.copytree(
            Path(package_init).parent,
            root / "virtbackup",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for path in (root, *root.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_missing_permission_is_one_line_exit_2(tmp_path: Path, readable_by_all: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": str(readable_by_all),
    }
    # The test's interpreter if that user may run it (a virtualenv inside an unreachable
    # checkout is not), else the system's, which has the packages as Debian installs them.
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(
            [*nobody, python, "-c", "import virtbackup.cli.main"],
            check=False,
            capture_output=True,
            env=env,
        )
        if probe.returncode == 0:
            break
    else:
        unavailable("an unprivileged user", f"nobody cannot import virtbackup: {probe.stderr!r}")
    result = subprocess.run(
        [*nobody, python, "-m", "virtbackup", *NO_HOST_CONFIG, "list"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("virtbackup: error: cannot connect to qemu:///system: ")
    assert "access denied" in result.stderr or "Permission denied" in result.stderr
    assert result.stderr.count("\n") == 1
