"""The names and XML of the backup-API method."""

import xml.etree.ElementTree as ET
from pathlib import PurePath

from virtbackup.core.backup_job import (
    checkpoint_name,
    checkpoint_xml,
    checkpoints_to_delete,
    is_checkpoint_name,
    job_socket,
    pull_backup_xml,
    scratch_path,
    socket_path,
)

RUN = "20240102T030405Z-abcdef"


def test_files_are_named_after_the_run() -> None:
    assert str(socket_path("u1", RUN)) == f"/var/lib/libvirt/qemu/u1.virtbackup-{RUN}.sock"
    assert str(scratch_path("/img/a.qcow2", "vda", "u1", RUN, None)) == (
        f"/img/a.qcow2.virtbackup-{RUN}.scratch"
    )
    assert str(scratch_path("/img/a.qcow2", "vda", "u1", RUN, PurePath("/ovl"))) == (
        f"/ovl/u1-vda.virtbackup-{RUN}.scratch"
    )
    assert checkpoint_name(RUN) == f"virtbackup-{RUN}"


def test_pull_backup_xml_serves_the_chosen_disks_only() -> None:
    xml = pull_backup_xml("/s.sock", {"vda": "/a.scratch"}, ["vda", "vdb"], since="cp1")
    root = ET.fromstring(xml)
    assert root.get("mode") == "pull" and root.findtext("incremental") == "cp1"
    disks = {d.get("name"): d for d in root.iterfind("disks/disk")}
    assert disks["vda"].get("backup") == "yes" and disks["vdb"].get("backup") == "no"
    scratch = disks["vda"].find("scratch")
    assert scratch is not None and scratch.get("file") == "/a.scratch"
    assert job_socket(xml) == "/s.sock"
    assert ET.fromstring(pull_backup_xml("/s", {}, ["vda"])).find("incremental") is None


def test_job_socket_of_other_jobs() -> None:
    assert job_socket("<domainbackup mode='push'/>") is None
    assert job_socket("<domainbackup><server transport='tcp' name='h'/></domainbackup>") is None
    assert job_socket("not xml") is None


def test_checkpoint_xml_tracks_the_chosen_disks() -> None:
    root = ET.fromstring(checkpoint_xml("virtbackup-x", ["vda"], ["vda", "vdb"]))
    assert root.findtext("name") == "virtbackup-x"
    assert {d.get("name"): d.get("checkpoint") for d in root.iterfind("disks/disk")} == {
        "vda": "bitmap",
        "vdb": "no",
    }


def test_only_our_checkpoints_beyond_the_newest_few_are_deleted() -> None:
    ours = [checkpoint_name(f"2024010{day}T030405Z-abcdef") for day in range(1, 7)]
    everything = ["virtnbdbackup.0", *ours[:3], "mine", *ours[3:]]
    assert checkpoints_to_delete(everything, 4) == ours[:2]
    assert checkpoints_to_delete(everything, 10) == []
    assert checkpoints_to_delete(everything, 0) == ours
    assert is_checkpoint_name(ours[0]) and not is_checkpoint_name("virtbackup-x")


def test_a_disk_that_is_no_file_has_its_scratch_in_the_socket_directory() -> None:
    assert str(scratch_path(None, "vdb", "u1", RUN, None)) == (
        f"/var/lib/libvirt/qemu/u1-vdb.virtbackup-{RUN}.scratch"
    )
    assert str(scratch_path(None, "vdb", "u1", RUN, PurePath("/ovl"))) == (
        f"/ovl/u1-vdb.virtbackup-{RUN}.scratch"
    )


def test_an_untracked_disk_is_served_in_full_in_an_incremental_job() -> None:
    scratch = {"vda": "/a.scratch", "vdb": "/b.scratch"}
    xml = pull_backup_xml("/s.sock", scratch, ["vda", "vdb"], since="cp1", untracked=["vdb"])
    modes = {d.get("name"): d.get("backupmode") for d in ET.fromstring(xml).iter("disk")}
    assert modes == {"vda": None, "vdb": "full"}
    full = pull_backup_xml("/s.sock", scratch, ["vda", "vdb"], untracked=["vdb"])
    assert "backupmode" not in full  # a full job needs no mode per disk
