"""LV detection through a replaced runner: file disks via findmnt, block disks by device
number, and discovery's tolerance (no LVM tools: False; a failing tool: None)."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from virtbackup.adapters import lvm, runner
from virtbackup.core.errors import CommandFailed, MissingComponent

LVS_ROW = (
    '{"lv_name":"%s", "vg_name":"vg", "lv_path":"/dev/vg/%s", "lv_dm_path":"", '
    '"lv_size":"1073741824", "lv_attr":"-wi-ao----", "origin":"", "snap_percent":"", '
    '"vg_free":"0", "vg_extent_size":"4194304", "lv_kernel_major":"%d", '
    '"lv_kernel_minor":"%d"}'
)


def lvs_report(*rows: tuple[str, int, int]) -> str:
    body = ", ".join(LVS_ROW % (name, name, major, minor) for name, major, minor in rows)
    return f'{{"report": [{{"lv": [{body}]}}]}}'


def findmnt_report(target: str, devnum: str, fsroot: str = "/") -> str:
    return (
        f'{{"filesystems": [{{"target": "{target}", "source": "/dev/mapper/vg-vms", '
        f'"fstype": "ext4", "maj:min": "{devnum}", "fsroot": "{fsroot}"}}]}}'
    )


Fake = Callable[[list[str]], str]


def fake_runner(monkeypatch: pytest.MonkeyPatch, answer: Fake) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(
        argv: list[str],
        *,
        check: bool = True,
        input: bytes | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, answer(argv).encode(), b"")

    monkeypatch.setattr(runner, "run", run)
    return calls


def test_a_file_on_an_lv_is_found_through_its_mount(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    image = tmp_path / "vm.qcow2"
    image.touch()

    def answer(argv: list[str]) -> str:
        if argv[0] == "findmnt":
            return findmnt_report(str(tmp_path), "254:3", "/images")
        return lvs_report(("root", 254, 0), ("vms", 254, 3))

    calls = fake_runner(monkeypatch, answer)
    lookup = lvm.LvLookup()

    where = lookup.locate("file", str(image))
    assert where is not None
    assert where.lv.full_name == "vg/vms"
    assert where.inner_path == "/images/vm.qcow2" and where.fstype == "ext4"
    assert lookup.on_lv("file", str(image)) is True
    assert [c[0] for c in calls] == ["findmnt", "lvs"]  # cached: one look per path


def test_a_file_on_a_plain_partition_is_not_on_lvm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    image = tmp_path / "vm.raw"
    image.touch()

    def answer(argv: list[str]) -> str:
        if argv[0] == "findmnt":
            return findmnt_report(str(tmp_path), "8:1")
        return lvs_report(("vms", 254, 3))

    fake_runner(monkeypatch, answer)
    assert lvm.LvLookup().on_lv("file", str(image)) is False


def test_a_block_disk_is_matched_by_its_device_number(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lvm.devnum_of("/dev/null") is None  # a character device, not a block disk
    monkeypatch.setattr(lvm, "devnum_of", lambda path: (254, 7))
    fake_runner(monkeypatch, lambda argv: lvs_report(("vms", 254, 7)))

    where = lvm.LvLookup().locate("block", "/dev/dm-7")
    assert where is not None and where.lv.full_name == "vg/vms" and where.inner_path is None


def test_discovery_is_tolerant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = tmp_path / "vm.raw"
    image.touch()

    def missing(argv: list[str], **kwargs: object) -> None:
        raise MissingComponent("lvs is not installed")

    monkeypatch.setattr(runner, "run", missing)
    assert lvm.LvLookup().on_lv("file", str(image)) is False

    def failing(argv: list[str], **kwargs: object) -> None:
        raise CommandFailed(argv, 5, "  WARNING: Running as a non-root user.")

    monkeypatch.setattr(runner, "run", failing)
    assert lvm.LvLookup().on_lv("file", str(image)) is None
    assert lvm.LvLookup().on_lv("network", None) is None


def test_named_lvs_that_do_not_exist_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(
        argv: list[str],
        *,
        check: bool = True,
        input: bytes | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        assert not check  # lvs exits 5 when one of the named LVs is missing
        stderr = b'  Failed to find logical volume "vg/gone"'
        return subprocess.CompletedProcess(argv, 5, lvs_report().encode(), stderr)

    monkeypatch.setattr(runner, "run", run)
    assert lvm.find_lv("vg/gone") is None
