"""LVM facts and decisions: parsing real `lvs`/`findmnt` JSON, sizes, names, overflow."""

import pytest

from virtbackup.core.config import SnapshotSize
from virtbackup.core.lvm import (
    LvmOutputError,
    LvmSnapshotRecord,
    MountRecord,
    SnapshotSpaceError,
    check_fits,
    is_ours,
    lv_by_devnum,
    mount_options,
    overflow_problem,
    parse_findmnt,
    parse_lvs,
    path_inside,
    snapshot_bytes,
    snapshot_name,
)
from virtbackup.core.undo import record_from_dict, record_to_dict

MiB = 1 << 20

# Captured in the nested VM (lvm2 2.03.16): `lvs --reportformat json --units b --nosuffix
# -o LVS_FIELDS` with an ext4 LV mounted and snapshotted, and an xfs LV snapshotted.
LVS_JSON = """\
  {
      "report": [
          {
              "lv": [
                  {"lv_name":"extv", "vg_name":"vbvg", "lv_path":"/dev/vbvg/extv", "lv_dm_path":"/dev/mapper/vbvg-extv", "lv_size":"50331648", "lv_attr":"owi-aos---", "origin":"", "snap_percent":"", "vg_free":"88080384", "vg_extent_size":"4194304", "lv_kernel_major":"254", "lv_kernel_minor":"0"},
                  {"lv_name":"vbsnap-x", "vg_name":"vbvg", "lv_path":"/dev/vbvg/vbsnap-x", "lv_dm_path":"/dev/mapper/vbvg-vbsnap--x", "lv_size":"8388608", "lv_attr":"swi-aos---", "origin":"extv", "snap_percent":"25.44", "vg_free":"88080384", "vg_extent_size":"4194304", "lv_kernel_major":"254", "lv_kernel_minor":"4"},
                  {"lv_name":"xfsv", "vg_name":"vbvg", "lv_path":"/dev/vbvg/xfsv", "lv_dm_path":"/dev/mapper/vbvg-xfsv", "lv_size":"50331648", "lv_attr":"-wi-------", "origin":"", "snap_percent":"", "vg_free":"88080384", "vg_extent_size":"4194304", "lv_kernel_major":"-1", "lv_kernel_minor":"-1"}
              ]
          }
      ]
  }
"""  # noqa: E501
# An overflowed snapshot, as `lvs -o lv_name,snap_percent,lv_attr` showed it.
INVALID_JSON = """\
  {"report": [{"lv": [{"lv_name":"vbsnap-y", "snap_percent":"100.00", "lv_attr":"swi-I-s---"}]}]}
"""
# The host without device-mapper: lvs exits 0 with an empty report.
EMPTY_JSON = '  {\n  "report": [\n  {\n  "lv": [\n  ]\n  }\n  ]\n  }\n'
FINDMNT_BIND = """\
{
   "filesystems": [
      {
         "target": "/mnt/bind",
         "source": "/dev/mapper/vbvg-extv[/images]",
         "fstype": "ext4",
         "maj:min": "254:0",
         "fsroot": "/images"
      }
   ]
}
"""
FINDMNT_TREE = """\
{"filesystems": [{"target": "/", "source": "/dev/vda", "fstype": "ext4", "maj:min": "254:0",
  "fsroot": "/", "children": [{"target": "/run", "source": "tmpfs", "fstype": "tmpfs",
  "maj:min": "0:25", "fsroot": "/", "children": [{"target": "/run/virtbackup/lvm/vbsnap-a",
  "source": "/dev/mapper/vg-vbsnap--a", "fstype": "xfs", "maj:min": "254:7",
  "fsroot": "/"}]}]}]}
"""


def test_parse_lvs_reads_sizes_attributes_and_device_numbers() -> None:
    ext, snap, xfs = parse_lvs(LVS_JSON)

    assert (ext.full_name, ext.size, ext.extent_size, ext.vg_free) == (
        "vbvg/extv",
        48 * MiB,
        4 * MiB,
        84 * MiB,
    )
    assert ext.devnum == (254, 0) and ext.origin is None and not ext.is_snapshot
    assert snap.is_snapshot and snap.origin == "extv" and snap.snap_percent == 25.44
    assert snap.dm_path == "/dev/mapper/vbvg-vbsnap--x"
    assert xfs.devnum is None and not xfs.active  # inactive: no kernel device
    assert parse_lvs(EMPTY_JSON) == []


def test_parse_lvs_rejects_what_is_not_a_report() -> None:
    with pytest.raises(LvmOutputError):
        parse_lvs("lvs: command failed")


def test_bind_mount_source_and_fsroot() -> None:
    (mount,) = parse_findmnt(FINDMNT_BIND)

    assert mount.source == "/dev/mapper/vbvg-extv" and mount.devnum == (254, 0)
    assert path_inside("/mnt/bind/vm/a.qcow2", mount) == "/images/vm/a.qcow2"


def test_findmnt_children_are_flattened_and_empty_output_is_no_mount() -> None:
    targets = [m.target for m in parse_findmnt(FINDMNT_TREE)]

    assert targets == ["/", "/run", "/run/virtbackup/lvm/vbsnap-a"]
    assert parse_findmnt("") == []


def test_path_inside_refuses_a_path_outside_the_mount() -> None:
    (mount,) = parse_findmnt(FINDMNT_BIND)
    with pytest.raises(ValueError):
        path_inside("/mnt/other/a.qcow2", mount)


def test_devices_resolve_to_lvs_by_major_minor() -> None:
    volumes = parse_lvs(LVS_JSON)

    assert lv_by_devnum(volumes, (254, 4)) == volumes[1]
    assert lv_by_devnum(volumes, (8, 1)) is None


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (SnapshotSize(percent=10.0), 8 * MiB),  # 4.8 MiB, in whole 4 MiB extents
        (SnapshotSize(percent=1.0), 4 * MiB),  # at least one extent
        (SnapshotSize(bytes=2 << 30), 52 * MiB),  # never more than the origin needs
        (SnapshotSize(bytes=12 * MiB), 12 * MiB),
        (SnapshotSize(percent=100.0), 48 * MiB),
    ],
)
def test_snapshot_bytes(size: SnapshotSize, expected: int) -> None:
    origin = parse_lvs(LVS_JSON)[0]  # 48 MiB, 4 MiB extents
    assert snapshot_bytes(size, origin.size, origin.extent_size) == expected


def test_check_fits_names_the_vg_and_the_way_out() -> None:
    origin = parse_lvs(LVS_JSON)[0]
    check_fits(origin, 8 * MiB, 8 * MiB)
    with pytest.raises(SnapshotSpaceError) as caught:
        check_fits(origin, 12 * MiB, 8 * MiB)
    assert str(caught.value).startswith(
        "volume group vbvg has 8.0 MiB free, the snapshot of vbvg/extv needs 12.0 MiB"
    )
    assert "--snapshot-size" in str(caught.value)


def test_snapshot_names_carry_the_prefix_and_fit_lvm() -> None:
    run = "20240102T030405Z-1a2b3c"
    assert snapshot_name("vms", run) == f"vbsnap-vms-{run}"
    assert snapshot_name("vms", run, 2) == f"vbsnap-vms-{run}-2"
    assert len(snapshot_name("x" * 200, run)) == 127


def test_only_prefixed_snapshots_are_ours() -> None:
    ext, snap, _ = parse_lvs(LVS_JSON)
    assert is_ours(snap)
    assert not is_ours(ext)


@pytest.mark.parametrize(
    ("fstype", "extra"),
    [("ext4", ["noload"]), ("ext3", ["noload"]), ("xfs", ["nouuid"]), ("vfat", [])],
)
def test_mount_options(fstype: str, extra: list[str]) -> None:
    assert mount_options(fstype) == ["ro", "nodev", "nosuid", "noexec", *extra]


def test_overflow_problem() -> None:
    _, healthy, _ = parse_lvs(LVS_JSON)
    (invalid,) = parse_lvs(INVALID_JSON.replace('"lv_name"', '"vg_name":"vg", "lv_name"'))

    assert overflow_problem(healthy) is None
    assert overflow_problem(invalid) == "overflowed and became invalid"
    assert overflow_problem(None) == "disappeared"


def test_lvm_records_round_trip_through_the_journal_format() -> None:
    for record in (
        LvmSnapshotRecord(vg="vg", name="vbsnap-vms-run", origin="vms"),
        MountRecord(target="/run/virtbackup/lvm/vbsnap-vms-run", source="/dev/vg/vbsnap-vms-run"),
    ):
        assert record_from_dict(record_to_dict(record)) == record


def test_a_journal_cannot_make_us_remove_a_foreign_lv() -> None:
    from virtbackup.core.undo import JournalError

    with pytest.raises(JournalError):
        record_from_dict({"kind": "lvm-snapshot", "vg": "vg", "name": "root", "origin": "x"})
