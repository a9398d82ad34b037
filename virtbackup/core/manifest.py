"""`manifest.json` and `verified.json` of a backup: pure build and parse, with a version.

manifest.json (format_version 1)::

    {
      "tool": "virtbackup", "tool_version": "0.1.0", "format_version": 1,
      "domain": {"name": "web1", "uuid": "..."},
      "started": "2025-01-25T18:30:00Z", "finished": "2025-01-25T18:31:12Z",
      "method": "offline",
      "disks": [{
        "target": "vda", "source": "/var/lib/libvirt/images/web1.qcow2",
        "format": "qcow2", "virtual_size": 21474836480, "byte_size": 1234567168,
        "stored_size": 456789012, "file": "vda.qcow2.lz4",
        "stream_format_version": 1, "chunk_size": 4194304,
        "digest_algorithm": "sha256-4MiB-chunks", "digest": "<hex, see below>"
      }],
      "left_out": [{"target": "vdb", "reason": "network disks are not supported yet"}]
    }

`left_out` lists the domain's disks that are not in the backup, each with the reason
(excluded by configuration, removable media, a disk that cannot be backed up); it is
written only when there are any, so a manifest without it has every disk.

`byte_size` is the size of the source file or device (what `lz4 -d` gives back),
`virtual_size` what the guest sees, `stored_size` the size of the stream file.
`digest` is the whole-disk digest of the uncompressed bytes named by `digest_algorithm`
(specified in core/streamformat.py; its chunk size equals `chunk_size`). For
``sha256-4MiB-chunks`` a user checks it with
``lz4 -dc vda.qcow2.lz4 | split -b 4194304 --filter=sha256sum | sha256sum``.

An encrypted backup (`--encrypt`) keeps that manifest as `manifest.json.age` and beside it
a public `manifest.json` with what listing and retention need without a key::

    {
      "tool": "virtbackup", "tool_version": "0.1.0", "format_version": 1,
      "encryption": {"scheme": "age", "recipients": ["sha256:<16 hex>"]},
      "domain": {"name": "web1"},
      "started": "...Z", "finished": "...Z", "method": "snapshot",
      "files": [{"file": "vda.qcow2.lz4.age", "target": "vda", "stored_size": 456789999},
                {"file": "domain.xml.age", "stored_size": 2345}, ...]
    }

verified.json, written by `verify` beside the manifest (a backup's data files are never
changed after the rename; this record is the only file added later)::

    {"format_version": 1, "verified_at": "...Z", "ok": true, "problem": null,
     "tool_version": "0.1.0"}
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from virtbackup import FORMAT_VERSION

TOOL_NAME = "virtbackup"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ManifestFormatError(ValueError):
    """The text is not a manifest (or verify record) this version can read."""


@dataclass(frozen=True)
class DiskRecord:
    target: str
    source: str
    format: str
    virtual_size: int
    byte_size: int
    stored_size: int
    file: str
    stream_format_version: int
    chunk_size: int
    digest_algorithm: str
    digest: str
    # --skip-free: the stream holds the guest's used blocks only (same files, not the
    # same image bytes); written to the manifest only when true
    free_space_skipped: bool = False


@dataclass(frozen=True)
class LeftOutDisk:
    """A disk of the domain that is not in the backup, and why."""

    target: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    tool_version: str
    domain_name: str
    domain_uuid: str
    started: datetime
    finished: datetime
    method: str
    disks: tuple[DiskRecord, ...]
    format_version: int = FORMAT_VERSION
    left_out: tuple[LeftOutDisk, ...] = ()

    @property
    def stored_size(self) -> int:
        return sum(disk.stored_size for disk in self.disks)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(disk.target for disk in self.disks)


@dataclass(frozen=True)
class StoredFile:
    file: str
    stored_size: int
    target: str | None = None  # the disk whose stream this is


@dataclass(frozen=True)
class Sealed:
    """The public manifest of an encrypted backup: no paths, uuid or digests."""

    tool_version: str
    domain_name: str
    started: datetime
    finished: datetime
    method: str
    recipients: tuple[str, ...]  # fingerprints of the public keys, never a key
    files: tuple[StoredFile, ...]
    scheme: str = "age"
    format_version: int = FORMAT_VERSION

    @property
    def stored_size(self) -> int:
        return sum(f.stored_size for f in self.files)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(f.target for f in self.files if f.target is not None)


@dataclass(frozen=True)
class VerifyRecord:
    verified_at: datetime
    ok: bool
    problem: str | None
    tool_version: str


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def build_manifest(manifest: Manifest) -> str:
    document = {
        "tool": TOOL_NAME,
        "tool_version": manifest.tool_version,
        "format_version": manifest.format_version,
        "domain": {"name": manifest.domain_name, "uuid": manifest.domain_uuid},
        "started": format_time(manifest.started),
        "finished": format_time(manifest.finished),
        "method": manifest.method,
        "disks": [_disk_document(disk) for disk in manifest.disks],
    }
    if manifest.left_out:
        document["left_out"] = [
            {"target": disk.target, "reason": disk.reason} for disk in manifest.left_out
        ]
    return json.dumps(document, indent=2) + "\n"


def build_sealed(sealed: Sealed) -> str:
    document = {
        "tool": TOOL_NAME,
        "tool_version": sealed.tool_version,
        "format_version": sealed.format_version,
        "encryption": {"scheme": sealed.scheme, "recipients": list(sealed.recipients)},
        "domain": {"name": sealed.domain_name},
        "started": format_time(sealed.started),
        "finished": format_time(sealed.finished),
        "method": sealed.method,
        "files": [{k: v for k, v in f.__dict__.items() if v is not None} for f in sealed.files],
    }
    return json.dumps(document, indent=2) + "\n"


def parse_any_manifest(text: str) -> Manifest | Sealed:
    """A backup's manifest.json: the manifest, or the public one of an encrypted backup."""
    document = _versioned(text)
    if "encryption" in document:
        return _parse_sealed(document)
    return _parse_manifest_document(document)


def parse_manifest(text: str) -> Manifest:
    document = _versioned(text)
    if "encryption" in document:
        raise ManifestFormatError("it is the public manifest of an encrypted backup")
    return _parse_manifest_document(document)


def _versioned(text: str) -> dict[str, Any]:
    document = _load_object(text)
    if document.get("tool") != TOOL_NAME:
        raise ManifestFormatError("it was not written by virtbackup")
    version = _field(document, "format_version", int)
    if version != FORMAT_VERSION:
        raise ManifestFormatError(
            f"format version {version} is not supported (this virtbackup reads "
            f"version {FORMAT_VERSION})"
        )
    return document


def _parse_sealed(document: dict[str, Any]) -> Sealed:
    encryption = _field(document, "encryption", dict)
    recipients = _field(encryption, "recipients", list)
    files = []
    for entry in _field(document, "files", list):
        if not isinstance(entry, dict):
            raise ManifestFormatError("a file entry is not an object")
        name = _plain_name(_field(entry, "file", str))
        target = entry.get("target")
        files.append(
            StoredFile(
                name,
                _field(entry, "stored_size", int),
                target if isinstance(target, str) else None,
            )
        )
    return Sealed(
        tool_version=_field(document, "tool_version", str),
        domain_name=_field(_field(document, "domain", dict), "name", str),
        started=_time_field(document, "started"),
        finished=_time_field(document, "finished"),
        method=_field(document, "method", str),
        recipients=tuple(str(r) for r in recipients),
        files=tuple(files),
        scheme=_field(encryption, "scheme", str),
    )


def _plain_name(name: str) -> str:
    if "/" in name or name.startswith(".") or not name:
        raise ManifestFormatError(f"file name {name!r} is not a plain name")
    return name


def _parse_manifest_document(document: dict[str, Any]) -> Manifest:
    version = document["format_version"]
    domain = _field(document, "domain", dict)
    disks = _field(document, "disks", list)
    return Manifest(
        tool_version=_field(document, "tool_version", str),
        domain_name=_field(domain, "name", str),
        domain_uuid=_field(domain, "uuid", str),
        started=_time_field(document, "started"),
        finished=_time_field(document, "finished"),
        method=_field(document, "method", str),
        disks=tuple(_parse_disk(disk) for disk in disks),
        format_version=version,
        left_out=_parse_left_out(document),
    )


def _parse_left_out(document: dict[str, Any]) -> tuple[LeftOutDisk, ...]:
    if "left_out" not in document:
        return ()
    entries = []
    for entry in _field(document, "left_out", list):
        if not isinstance(entry, dict) or set(entry) != {"target", "reason"}:
            raise ManifestFormatError("a left_out entry is not {target, reason}")
        entries.append(LeftOutDisk(_field(entry, "target", str), _field(entry, "reason", str)))
    return tuple(entries)


def _disk_document(disk: DiskRecord) -> dict[str, Any]:
    document = dict(disk.__dict__)
    if not disk.free_space_skipped:
        del document["free_space_skipped"]
    return document


def _parse_disk(disk: object) -> DiskRecord:
    if not isinstance(disk, dict):
        raise ManifestFormatError("a disk entry is not an object")
    text_fields = ("target", "source", "format", "file", "digest_algorithm", "digest")
    int_fields = (
        "virtual_size",
        "byte_size",
        "stored_size",
        "stream_format_version",
        "chunk_size",
    )
    values: dict[str, Any] = {name: _field(disk, name, str) for name in text_fields}
    values.update({name: _field(disk, name, int) for name in int_fields})
    if "free_space_skipped" in disk:
        values["free_space_skipped"] = _field(disk, "free_space_skipped", bool)
    _plain_name(values["file"])
    return DiskRecord(**values)


def build_verify_record(record: VerifyRecord) -> str:
    document = {
        "format_version": FORMAT_VERSION,
        "verified_at": format_time(record.verified_at),
        "ok": record.ok,
        "problem": record.problem,
        "tool_version": record.tool_version,
    }
    return json.dumps(document, indent=2) + "\n"


def parse_verify_record(text: str) -> VerifyRecord:
    document = _load_object(text)
    version = _field(document, "format_version", int)
    if version != FORMAT_VERSION:
        raise ManifestFormatError(f"verify record version {version} is not supported")
    problem = document.get("problem")
    return VerifyRecord(
        verified_at=_time_field(document, "verified_at"),
        ok=_field(document, "ok", bool),
        problem=problem if isinstance(problem, str) else None,
        tool_version=_field(document, "tool_version", str),
    )


def _load_object(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestFormatError(f"it is not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise ManifestFormatError("it is not a JSON object")
    return document


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    if name not in document:
        raise ManifestFormatError(f"key {name!r} is missing")
    value = document[name]
    # bool is an int in Python; a size must not be `true`.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestFormatError(f"key {name!r} is not of type {kind.__name__}")
    return value


def _time_field(document: dict[str, Any], name: str) -> datetime:
    text = _field(document, name, str)
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ManifestFormatError(
            f"key {name!r} is not a UTC time like 2025-01-25T18:30:00Z"
        ) from None
