"""How `files` and `mount` name filesystems and paths."""

import pytest

from virtbackup.core.errors import UsageError
from virtbackup.core.guest_paths import copied_name, filesystem_names, guest_path


def test_devices_are_named_after_the_backup_disks_and_volumes() -> None:
    devices = ["/dev/sda1", "/dev/sda2", "/dev/sdb", "/dev/vg/data", "/dev/sdq1"]
    assert filesystem_names(devices, ["vda", "vdb"]) == {
        "/dev/sda1": "vda1",
        "/dev/sda2": "vda2",
        "/dev/sdb": "vdb",
        "/dev/vg/data": "vg-data",
        "/dev/sdq1": "sdq1",  # no such disk: named as the appliance names it
    }


def test_two_filesystems_never_share_a_name() -> None:
    with pytest.raises(UsageError, match="would both be /vg-data"):
        filesystem_names(["/dev/vg/data", "/dev/vg-data"], ["vda"])


@pytest.mark.parametrize(
    ("given", "normal"),
    [("/", "/"), ("", "/"), ("vda1//etc/./hostname", "/vda1/etc/hostname"), ("/vda1/", "/vda1")],
)
def test_paths_are_made_absolute_and_normal(given: str, normal: str) -> None:
    assert guest_path(given) == normal


@pytest.mark.parametrize("bad", ["/vda1/../../etc", "..", "/a\0b"])
def test_paths_that_climb_out_or_hold_nul_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        guest_path(bad)


def test_a_copy_is_named_after_the_last_part_and_the_root_is_refused() -> None:
    assert copied_name("/vda1/etc/hostname") == "hostname"
    assert copied_name("/vda1/") == "vda1"
    with pytest.raises(UsageError, match="/ holds the backup's filesystems"):
        copied_name("/")
