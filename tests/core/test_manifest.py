import json
from datetime import UTC, datetime

import pytest
from manifest_samples import MANIFEST

from virtbackup.core.json_fields import ManifestFormatError
from virtbackup.core.manifest import (
    LeftOutDisk,
    Manifest,
    Sealed,
    StoredFile,
    build_manifest,
    build_sealed,
    parse_any_manifest,
    parse_manifest,
)
from virtbackup.core.verify_record import VerifyRecord, build_verify_record, parse_verify_record


def test_round_trip() -> None:
    text = build_manifest(MANIFEST)
    assert parse_manifest(text) == MANIFEST
    document = json.loads(text)
    assert document["tool"] == "virtbackup"
    assert document["started"] == "2025-01-25T18:30:00Z"
    assert MANIFEST.stored_size == 1 << 30


def test_left_out_disks_round_trip() -> None:
    left_out = (
        LeftOutDisk("vdb", "network disks are not supported yet (nbd://h:1/e)"),
        LeftOutDisk("hdc", "removable media (cdrom)"),
    )
    manifest = Manifest(**{**MANIFEST.__dict__, "left_out": left_out})
    text = build_manifest(manifest)
    assert parse_manifest(text) == manifest
    assert json.loads(text)["left_out"][0] == {"target": "vdb", "reason": left_out[0].reason}
    assert "left_out" not in json.loads(build_manifest(MANIFEST))  # older readers see no change


def test_domain_xml_digest_round_trips_and_is_strict() -> None:
    bound = Manifest(**{**MANIFEST.__dict__, "domain_xml_sha256": "0f" * 32})
    text = build_manifest(bound)
    assert json.loads(text)["domain_xml_sha256"] == "0f" * 32
    assert parse_manifest(text) == bound
    assert parse_manifest(build_manifest(MANIFEST)).domain_xml_sha256 is None  # older backups
    for bad in ("0F" * 32, "0f" * 31, "0f" * 33, "", "g" * 64, 7, None):
        document = json.loads(text)
        document["domain_xml_sha256"] = bad
        with pytest.raises(ManifestFormatError, match="domain_xml_sha256"):
            parse_manifest(json.dumps(document))


def test_checkpoint_round_trips_and_is_strict() -> None:
    name = "virtbackup-20250125T183000Z-1a2b3c"
    tracked = Manifest(**{**MANIFEST.__dict__, "method": "backup-api", "checkpoint": name})
    text = build_manifest(tracked)
    assert json.loads(text)["checkpoint"] == name
    assert parse_manifest(text) == tracked
    assert "checkpoint" not in json.loads(build_manifest(MANIFEST))  # older readers see no change
    assert parse_manifest(build_manifest(MANIFEST)).checkpoint is None  # older backups
    for bad in ("virtbackup-x", "other-20250125T183000Z-1a2b3c", name + "\n", "", 7, None):
        document = json.loads(text)
        document["checkpoint"] = bad
        with pytest.raises(ManifestFormatError, match="checkpoint"):
            parse_manifest(json.dumps(document))


def _edited(edit: dict[str, object]) -> str:
    document = json.loads(build_manifest(MANIFEST))
    document.update(edit)
    return json.dumps(document)


def _without_disk_key(key: str) -> str:
    document = json.loads(build_manifest(MANIFEST))
    del document["disks"][0][key]
    return json.dumps(document)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        (_edited({"tool": "other"}), "not written by virtbackup"),
        (_edited({"format_version": 2}), "format version 2 is not supported"),
        (_edited({"method": None}), "'method' is not of type str"),
        (_edited({"started": "yesterday"}), "'started' is not a UTC time"),
        (_without_disk_key("digest"), r"disks\[0\].digest is missing"),
        (_without_disk_key("byte_size"), r"disks\[0\].byte_size is missing"),
        (_edited({"disks": ["vda"]}), r"disks\[0\] is not an object"),
        (_edited({"left_out": {"vdb": "x"}}), "'left_out' is not of type list"),
        (_edited({"left_out": [{"target": "vdb"}]}), r"left_out\[0\] is not"),
        (_edited({"left_out": [{"target": "../x", "reason": ""}]}), r"left_out\[0\].target"),
        (_edited({"left_out": [{"target": "vdb", "reason": "a\nb"}]}), "not one line"),
        (
            _edited({"left_out": [{"target": "vdb", "reason": 1}]}),
            r"left_out\[0\].reason is not of type str",
        ),
        (_edited({"left_out": [{"target": "v", "reason": "", "x": 1}]}), r"left_out\[0\]"),
    ],
)
def test_bad_manifests(text: str, message: str) -> None:
    with pytest.raises(ManifestFormatError, match=message):
        parse_manifest(text)


def test_missing_top_level_key() -> None:
    document = json.loads(build_manifest(MANIFEST))
    del document["domain"]
    with pytest.raises(ManifestFormatError, match="'domain' is missing"):
        parse_manifest(json.dumps(document))


def test_sizes_must_be_integers_not_booleans() -> None:
    document = json.loads(build_manifest(MANIFEST))
    document["disks"][0]["byte_size"] = True
    with pytest.raises(ManifestFormatError, match=r"disks\[0\].byte_size is not of type int"):
        parse_manifest(json.dumps(document))


def test_disk_file_must_be_a_plain_name() -> None:
    document = json.loads(build_manifest(MANIFEST))
    document["disks"][0]["file"] = "../../etc/shadow"
    with pytest.raises(ManifestFormatError, match=r"disks\[0\].file .* is not vda.qcow2.lz4"):
        parse_manifest(json.dumps(document))


def test_verify_record_round_trip() -> None:
    record = VerifyRecord(datetime(2025, 2, 1, tzinfo=UTC), False, "vda: bad frame", "0.1.0")
    assert parse_verify_record(build_verify_record(record)) == record
    with pytest.raises(ManifestFormatError, match="'ok' is missing"):
        parse_verify_record('{"format_version": 1, "verified_at": "2025-02-01T00:00:00Z"}')


SEALED = Sealed(
    tool_version="0.1.0",
    domain_name="web1",
    started=MANIFEST.started,
    finished=MANIFEST.finished,
    method="snapshot",
    recipients=("sha256:0123456789abcdef",),
    files=(
        StoredFile("vda.qcow2.lz4.age", 123, "vda"),
        StoredFile("domain.xml.age", 45),
        StoredFile("manifest.json.age", 67),
    ),
)


def test_public_manifest_round_trip() -> None:
    text = build_sealed(SEALED)
    assert parse_any_manifest(text) == SEALED
    assert parse_any_manifest(build_manifest(MANIFEST)) == MANIFEST
    assert SEALED.stored_size == 123 + 45 + 67 and SEALED.targets == ("vda",)
    document = json.loads(text)
    assert document["encryption"] == {"scheme": "age", "recipients": ["sha256:0123456789abcdef"]}
    assert "disks" not in document and "uuid" not in document["domain"]
    with pytest.raises(ManifestFormatError, match="public manifest of an encrypted backup"):
        parse_manifest(text)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"files": [{"file": "../x", "stored_size": 1}]}, "is not a file of a backup"),
        ({"files": [{"file": "x.age"}]}, r"files\[0\].stored_size is missing"),
        ({"encryption": {"scheme": "age"}}, "'recipients' is missing"),
        ({"files": ["x"]}, r"files\[0\] is not an object"),
    ],
)
def test_bad_public_manifests(edit: dict[str, object], message: str) -> None:
    document = json.loads(build_sealed(SEALED))
    document.update(edit)
    with pytest.raises(ManifestFormatError, match=message):
        parse_any_manifest(json.dumps(document))
